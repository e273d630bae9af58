"""Stage (a): train a head on cached frozen-backbone features, in seconds.

Under torchrun each process trains on its DistributedSampler shard of the
feature rows (``batch_size`` rows per process per step) inside
DistributedDataParallel; validation confusion matrices are summed over ranks
so every rank takes the same early-stopping decision.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import confusion_matrix, f1_score
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ..config import TrainConfig
from ..models.outputs import predict_proba
from ..progress import progress_bar
from .distributed import DistContext, all_reduce_sum, autocast, current, global_mean, shard_indices, wrap_ddp


@dataclass
class TrainResult:
    best_epoch: int
    best_val_f1: float
    history: list[dict] = field(default_factory=list)


def class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    present = np.unique(y)
    w = np.ones(num_classes, dtype=np.float32)
    w[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.tensor(w, dtype=torch.float32)


def scores(y: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple[float, float]:
    """Macro-F1 (sklearn, ``zero_division=0``) and accuracy of predicted labels ``pred``, on one process."""
    f1 = float(f1_score(y, pred, average="macro", labels=list(range(num_classes)), zero_division=0))
    return f1, float((pred == y).mean())


def scores_from_confusion(cm: np.ndarray) -> tuple[float, float]:
    """Macro-F1 (zero for a class never predicted nor present, as sklearn's ``zero_division=0``) and accuracy."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean()), float(tp.sum() / max(cm.sum(), 1.0))


def sharded_confusion(predict, n: int, y: np.ndarray, num_classes: int, ctx: DistContext) -> np.ndarray:
    """Each rank predicts rows ``rank::world_size`` (``predict(index) -> labels``); the matrices are summed."""
    idx = shard_indices(n, ctx)
    local = confusion_matrix(y[idx], predict(idx), labels=list(range(num_classes))) if len(idx) else np.zeros((num_classes,) * 2)
    return all_reduce_sum(local)


class _BestEpoch:
    """Early stopping on validation macro-F1: keeps the best epoch's weights."""

    def __init__(self, head: nn.Module, patience: int):
        self.state, self.f1, self.epoch, self.stale, self.patience = copy.deepcopy(head.state_dict()), -1.0, 0, 0, patience

    def stop_after(self, epoch: int, val_f1: float, head: nn.Module) -> bool:
        if val_f1 > self.f1:
            self.f1, self.epoch, self.stale = val_f1, epoch, 0
            self.state = copy.deepcopy(head.state_dict())
            return False
        self.stale += 1
        return self.stale >= self.patience


def train_step(net: nn.Module, params, opt: torch.optim.Optimizer, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
               device: torch.device, precision: str, *, scale=None, clip: float | None = 5.0) -> torch.Tensor:
    """One optimiser step: autocast forward, fp32 loss, backward (of ``scale(loss)`` when given), clip, step.

    Returns the unscaled loss (detached). Shared by head training and fine-tuning, single-process and DDP.
    """
    opt.zero_grad(set_to_none=True)
    with autocast(device, precision):
        logits = net(x)
    loss = loss_fn(logits.float(), y)
    (scale(loss) if scale is not None else loss).backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return loss.detach()


def _fit(head: nn.Module, cfg: TrainConfig, run_epoch, validate, description: str, progress: bool) -> TrainResult:
    """The epoch loop both head trainers share: AdamW + cosine schedule, early stopping on validation macro-F1.

    ``run_epoch(epoch, opt) -> mean loss`` trains one epoch; ``validate() -> (macro-F1, accuracy)``.
    The head is left (on the CPU, eval mode) holding the weights of its best validation epoch.
    """
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    best = _BestEpoch(head, cfg.patience)
    history: list[dict] = []
    with progress_bar(total=cfg.epochs, description=description, enabled=progress) as bar:
        for epoch in range(1, cfg.epochs + 1):
            loss = run_epoch(epoch, opt)
            sched.step()
            val_f1, val_acc = validate()
            history.append({"epoch": epoch, "loss": loss, "val_f1": val_f1, "val_acc": val_acc})
            bar.advance()
            bar.set(f"loss {loss:.3f}  val F1 {val_f1:.3f}  acc {val_acc:.3f}")
            if best.stop_after(epoch, val_f1, head):
                break
    head.load_state_dict(best.state)
    head.to("cpu").eval()
    return TrainResult(best.epoch, best.f1, history)


def train_head(
    head: nn.Module,
    x_train: torch.Tensor,
    y_train: np.ndarray,
    x_val: torch.Tensor,
    y_val: np.ndarray,
    cfg: TrainConfig,
    num_classes: int,
    progress: bool = True,
    *,
    sample_weight: np.ndarray | None = None,
) -> TrainResult:
    """AdamW + (class-weighted) cross-entropy, early stopping on validation macro-F1.

    ``sample_weight`` (per training row, e.g. :func:`cxrdx.data.sampling.row_weights` of ``train.sampling``)
    replaces the class weights: a batch's loss is ``sum(w_i * CE_i) / sum(w_i)``.
    The head is left holding the weights of its best validation epoch.
    Under torchrun (a process group is running) it trains with DDP instead.
    """
    ctx = current()
    if ctx.enabled:
        return _train_head_distributed(head, x_train, y_train, x_val, y_val, cfg, num_classes, ctx, progress, sample_weight)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    weight = class_weights(y_train, num_classes) if cfg.class_weighted else None
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    yt = torch.tensor(np.asarray(y_train), dtype=torch.long)  # a copy: y_train may be a read-only view
    rows_w = None if sample_weight is None else torch.as_tensor(np.asarray(sample_weight), dtype=torch.float32)
    cpu = torch.device("cpu")

    def run_epoch(epoch: int, opt: torch.optim.Optimizer) -> float:
        head.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            if len(idx) < 2:
                continue
            fn = loss_fn if rows_w is None else row_weighted_loss(rows_w[idx])
            loss = train_step(head, head.parameters(), opt, fn, x_train[idx], yt[idx], cpu, cfg.precision)
            total += loss.item() * len(idx)
            count += len(idx)
        return total / max(count, 1)

    def validate() -> tuple[float, float]:
        return scores(y_val, predict_proba(head, x_val).argmax(1), num_classes)

    return _fit(head, cfg, run_epoch, validate, "train head", progress)


def row_weighted_loss(w: torch.Tensor, reduction: str = "mean"):
    """Cross-entropy with a weight per row: ``sum(w_i * CE_i) / sum(w_i)`` (``mean``) or ``sum(w_i * CE_i)`` (``sum``)."""

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wd = w.to(logits.device)
        total = (nn.functional.cross_entropy(logits, y, reduction="none") * wd).sum()
        return total / wd.sum().clamp_min(1e-12) if reduction == "mean" else total

    return loss


def _train_head_distributed(
    head: nn.Module, x_train: torch.Tensor, y_train: np.ndarray, x_val: torch.Tensor, y_val: np.ndarray,
    cfg: TrainConfig, num_classes: int, ctx: DistContext, progress: bool, sample_weight: np.ndarray | None = None,
) -> TrainResult:
    """The same recipe with DDP: one step = ``batch_size`` rows on each of ``world_size`` processes.

    The loss is the class-weighted mean over the *global* batch (per-rank weighted
    sums divided by the all-reduced weight total), so N processes with batch b
    take the same steps as one process with batch N*b and the same sampler seed.
    """
    torch.manual_seed(cfg.seed)
    device = ctx.device
    head.to(device)
    ddp_head = wrap_ddp(head, ctx)
    weight = class_weights(y_train, num_classes) if cfg.class_weighted else None
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device), reduction="sum")
    yt = torch.tensor(np.asarray(y_train), dtype=torch.long)  # a copy: y_train may be a read-only view
    rows_w = None if sample_weight is None else torch.as_tensor(np.asarray(sample_weight), dtype=torch.float32)
    rows = TensorDataset(torch.arange(len(x_train)))
    sampler = DistributedSampler(rows, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(rows, batch_size=cfg.batch_size, sampler=sampler)

    def run_epoch(epoch: int, opt: torch.optim.Optimizer) -> float:
        sampler.set_epoch(epoch)
        ddp_head.train()
        sums = np.zeros(2)
        for (idx,) in loader:
            if len(idx) * ctx.world_size < 2:
                continue
            fn = loss_fn
            if rows_w is not None:
                local_weight, fn = float(rows_w[idx].sum()), row_weighted_loss(rows_w[idx], reduction="sum")
            else:
                local_weight = float(weight[yt[idx]].sum()) if weight is not None else float(len(idx))
            loss_sum = train_step(ddp_head, head.parameters(), opt, fn, x_train[idx].to(device), yt[idx].to(device),
                                  device, cfg.precision, scale=lambda loss: global_mean(loss, local_weight, ctx))
            sums += (float(loss_sum), local_weight)
        total, count = all_reduce_sum(sums)
        return total / max(count, 1e-12)

    @torch.inference_mode()
    def predict_val(idx: np.ndarray) -> np.ndarray:
        head.eval()
        out = [head(x_val[idx[i : i + 256]].to(device)).argmax(1).cpu() for i in range(0, len(idx), 256)]
        return torch.cat(out).numpy()

    def validate() -> tuple[float, float]:
        return scores_from_confusion(sharded_confusion(predict_val, len(x_val), y_val, num_classes, ctx))

    return _fit(head, cfg, run_epoch, validate, f"train head ({ctx.world_size} processes)", progress and ctx.is_main)
