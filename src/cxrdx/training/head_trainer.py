"""Stage (a): train a head on cached frozen-backbone features, in seconds."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import f1_score
from sklearn.utils.class_weight import compute_class_weight

from ..config import TrainConfig
from ..progress import progress_bar


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


@torch.inference_mode()
def predict_proba(head: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    head.eval()
    out = [torch.softmax(head(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def train_head(
    head: nn.Module,
    x_train: torch.Tensor,
    y_train: np.ndarray,
    x_val: torch.Tensor,
    y_val: np.ndarray,
    cfg: TrainConfig,
    num_classes: int,
    progress: bool = True,
) -> TrainResult:
    """AdamW + (class-weighted) cross-entropy, early stopping on validation macro-F1.

    The head is left holding the weights of its best validation epoch.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    weight = class_weights(y_train, num_classes) if cfg.class_weighted else None
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    yt = torch.as_tensor(y_train, dtype=torch.long)
    best_state, best_f1, best_epoch, stale = copy.deepcopy(head.state_dict()), -1.0, 0, 0
    history: list[dict] = []
    with progress_bar(total=cfg.epochs, description="train head", enabled=progress) as bar:
        for epoch in range(1, cfg.epochs + 1):
            head.train()
            perm = torch.randperm(len(x_train), generator=gen)
            total, count = 0.0, 0
            for start in range(0, len(perm), cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                if len(idx) < 2:
                    continue
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(head(x_train[idx]), yt[idx])
                loss.backward()
                nn.utils.clip_grad_norm_(head.parameters(), 5.0)
                opt.step()
                total += float(loss) * len(idx)
                count += len(idx)
            sched.step()
            val_pred = predict_proba(head, x_val).argmax(1)
            val_f1 = float(f1_score(y_val, val_pred, average="macro", labels=list(range(num_classes)), zero_division=0))
            val_acc = float((val_pred == y_val).mean())
            history.append({"epoch": epoch, "loss": total / max(count, 1), "val_f1": val_f1, "val_acc": val_acc})
            bar.advance()
            bar.set(f"loss {total / max(count, 1):.3f}  val F1 {val_f1:.3f}  acc {val_acc:.3f}")
            if val_f1 > best_f1:
                best_f1, best_epoch, stale = val_f1, epoch, 0
                best_state = copy.deepcopy(head.state_dict())
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
    head.load_state_dict(best_state)
    head.eval()
    return TrainResult(best_epoch, best_f1, history)
