"""Stage (b): fine-tune the last N backbone blocks and the head end to end.

Runs on the GPU when there is one (bf16 autocast, channels_last). Under torchrun
the model is wrapped in DistributedDataParallel, each process reads its
DistributedSampler shard (``finetune_batch_size`` images per process per step),
validation confusion matrices are summed over ranks and only rank 0 writes files.
BatchNorm layers being trained use per-process batch statistics (plain DDP).

Training images are augmented as ``train.augment`` says (``basic``, or ``domain`` for hospitals the model
never saw: :mod:`cxrdx.data.transforms`). With ``train.sampling = source_balanced`` (single process) the
batches are drawn with replacement in proportion to :func:`cxrdx.data.sampling.manifest_weights`, seeded by
``train.seed``, and the loss is a plain cross-entropy (the weights already balance the classes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, DistributedSampler, Subset, WeightedRandomSampler

from ..config import Config, ConfigError
from ..data.dataset import CXRDataset
from ..data.io import ReadLimits
from ..data.sampling import manifest_weights
from ..data.transforms import build_transform
from ..features.roi import RegionOfInterest
from ..models.hybrid import HybridModel
from ..models.outputs import probabilities
from ..progress import progress_bar
from .resume import load_training_state, save_training_state
from .distributed import autocast, current, global_mean, to_channels_last, wrap_ddp
from .head_trainer import TrainResult, class_weights, scores, scores_from_confusion, sharded_confusion, train_step

RESUME_WEIGHTS = "finetune_last.safetensors"
RESUME_STATE = "finetune_optim"


def _set_frozen_bn_eval(model: nn.Module) -> None:
    """BatchNorm layers whose parameters are frozen keep their ImageNet running statistics."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


@torch.inference_mode()
def _predict(model: HybridModel, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    device = next(model.parameters()).device
    probs, ys = [], []
    for x, y in loader:
        with autocast(device):
            logits = model(x.to(device))
        probs.append(probabilities(logits).cpu().numpy())
        ys.append(y.numpy())
    return np.concatenate(probs), np.concatenate(ys)


def _shard_predictor(model: HybridModel, loader: DataLoader):
    """``idx -> predicted labels`` for rows ``idx`` of ``loader``'s dataset (one rank's validation shard)."""

    def predict_labels(idx: np.ndarray) -> np.ndarray:
        part = DataLoader(Subset(loader.dataset, idx.tolist()), batch_size=loader.batch_size, num_workers=loader.num_workers)
        return _predict(model, part)[0].argmax(1)

    return predict_labels


def finetune(
    model: HybridModel,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    tc = cfg.train
    run_dir = Path(run_dir)
    limits = ReadLimits.from_config(cfg.data)
    spec = model.spec
    train_tf = build_transform(cfg.data.image_size, spec.mean, spec.std, augment=tc.augment)
    eval_tf = build_transform(cfg.data.image_size, spec.mean, spec.std)
    ctx = current()
    device = ctx.device
    roi = RegionOfInterest.from_model_info(model.info)  # the region the head was trained on
    region = None if roi.is_identity else (lambda grey, row: roi(grey)[0])
    train_set = CXRDataset(train_df, train_tf, limits, image_fn=region)
    sampler = None
    row_w = None
    # decoding workers live for the whole fine-tuning (not re-forked every epoch), pinned memory on a GPU
    workers = {"num_workers": tc.num_workers, "persistent_workers": tc.num_workers > 0, "pin_memory": device.type == "cuda"}
    if tc.sampling != "none":  # batches drawn in proportion to the rows' weights (class balance included)
        if ctx.enabled:
            raise ConfigError("train.sampling=source_balanced fine-tuning is single-process only (not under torchrun); "
                              "use train.sampling=none or one process")
        row_w = manifest_weights(train_df, tc.sampling, class_weighted=tc.class_weighted, min_group=tc.source_min_images)
    if ctx.enabled:
        sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=tc.seed, drop_last=True)
        train_loader = DataLoader(train_set, batch_size=tc.finetune_batch_size, sampler=sampler, drop_last=True, **workers)
    else:
        gen = torch.Generator().manual_seed(tc.seed)
        weighted = None if row_w is None else WeightedRandomSampler(torch.as_tensor(row_w, dtype=torch.double), len(row_w),
                                                                    replacement=True, generator=gen)
        train_loader = DataLoader(
            train_set, batch_size=tc.finetune_batch_size, shuffle=weighted is None, sampler=weighted,
            generator=gen, drop_last=True, **workers,
        )
    val_loader = DataLoader(CXRDataset(val_df, eval_tf, limits, image_fn=region), batch_size=32, **workers)
    model.freeze_backbone(tc.finetune_blocks)
    model.to(device)
    to_channels_last(model, device)
    net = wrap_ddp(model, ctx)
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": backbone_params, "lr": tc.finetune_lr}, {"params": model.head.parameters(), "lr": tc.finetune_lr * 10}],
        weight_decay=tc.weight_decay,
    )
    num_classes = len(model.classes)
    # with weighted sampling the batches are already balanced: a plain cross-entropy
    weight = class_weights(train_df["target"].to_numpy(), num_classes) if tc.class_weighted and row_w is None else None
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device), reduction="sum" if ctx.enabled else "mean")
    start_epoch, best_f1, best_epoch, history = 1, -1.0, 0, []
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    if resume and (run_dir / RESUME_WEIGHTS).is_file():
        model.load_state_dict(load_file(str(run_dir / RESUME_WEIGHTS), device=str(device)))
        meta = load_training_state(run_dir / RESUME_STATE, opt)
        start_epoch, best_f1, best_epoch, history = meta["epoch"] + 1, meta["best_f1"], meta["best_epoch"], meta["history"]
        if (run_dir / "finetune_best.safetensors").is_file():
            best_state = load_file(str(run_dir / "finetune_best.safetensors"), device=str(device))
    total_steps = (tc.finetune_epochs - start_epoch + 1) * len(train_loader)
    with progress_bar(total=max(total_steps, 0), description=f"fine-tune last {tc.finetune_blocks} blocks", enabled=progress and ctx.is_main) as bar:
        for epoch in range(start_epoch, tc.finetune_epochs + 1):
            if sampler is not None:
                sampler.set_epoch(epoch)
            net.train()
            _set_frozen_bn_eval(model)
            total, count = 0.0, 0
            for x, y in train_loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                scale = None
                if ctx.enabled:  # weighted mean over the global batch (see head_trainer)
                    local_weight = float(weight[y.cpu()].sum()) if weight is not None else float(len(y))
                    scale = lambda loss, w=local_weight: global_mean(loss, w, ctx)  # noqa: E731
                shown = float(train_step(net, None, opt, loss_fn, x, y, device, tc.precision, scale=scale, clip=None))
                if ctx.enabled:
                    shown = shown / max(local_weight, 1e-12)
                total += shown * len(y)
                count += len(y)
                bar.advance()
                bar.set(f"epoch {epoch} loss {total / count:.3f}")
            if ctx.enabled:
                cm = sharded_confusion(_shard_predictor(model, val_loader), len(val_df), val_df["target"].to_numpy(), num_classes, ctx)
                val_f1, val_acc = scores_from_confusion(cm)
            else:
                probs, ys = _predict(model, val_loader)
                val_f1, val_acc = scores(ys, probs.argmax(1), num_classes)
            history.append({"epoch": epoch, "loss": total / max(count, 1), "val_f1": val_f1, "val_acc": val_acc})
            if val_f1 > best_f1:
                best_f1, best_epoch = val_f1, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if ctx.is_main:
                    save_file({k: v.contiguous() for k, v in best_state.items()}, str(run_dir / "finetune_best.safetensors"))
            if ctx.is_main:
                save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(run_dir / RESUME_WEIGHTS))
                save_training_state(run_dir / RESUME_STATE, opt, {"epoch": epoch, "best_f1": best_f1, "best_epoch": best_epoch, "history": history})
            if epoch - best_epoch >= tc.patience:
                break
    model.load_state_dict(best_state)
    model.to("cpu").to(memory_format=torch.contiguous_format)
    model.info.extra["finetuned"] = True
    model.info.extra["finetune_blocks"] = tc.finetune_blocks
    model.eval()
    return TrainResult(best_epoch, best_f1, history)
