"""Stage (b): fine-tune the last N backbone blocks and the head end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader

from ..config import Config
from ..data.dataset import CXRDataset
from ..data.io import ReadLimits
from ..data.transforms import build_transform
from ..models.hybrid import HybridModel
from ..progress import progress_bar
from .checkpoint import load_training_state, save_training_state
from .head_trainer import TrainResult, class_weights

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
    probs, ys = [], []
    for x, y in loader:
        probs.append(torch.softmax(model(x), 1).numpy())
        ys.append(y.numpy())
    return np.concatenate(probs), np.concatenate(ys)


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
    limits = ReadLimits(cfg.data.max_pixels, cfg.data.max_file_bytes)
    spec = model.spec
    train_tf = build_transform(cfg.data.image_size, spec.mean, spec.std, augment=tc.augment)
    eval_tf = build_transform(cfg.data.image_size, spec.mean, spec.std)
    gen = torch.Generator().manual_seed(tc.seed)
    train_loader = DataLoader(
        CXRDataset(train_df, train_tf, limits), batch_size=tc.finetune_batch_size, shuffle=True,
        num_workers=tc.num_workers, generator=gen, drop_last=True,
    )
    val_loader = DataLoader(CXRDataset(val_df, eval_tf, limits), batch_size=32, num_workers=tc.num_workers)
    model.freeze_backbone(tc.finetune_blocks)
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": backbone_params, "lr": tc.finetune_lr}, {"params": model.head.parameters(), "lr": tc.finetune_lr * 10}],
        weight_decay=tc.weight_decay,
    )
    num_classes = len(model.classes)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(train_df["target"].to_numpy(), num_classes) if tc.class_weighted else None)
    start_epoch, best_f1, best_epoch, history = 1, -1.0, 0, []
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    if resume and (run_dir / RESUME_WEIGHTS).is_file():
        model.load_state_dict(load_file(str(run_dir / RESUME_WEIGHTS)))
        meta = load_training_state(run_dir / RESUME_STATE, opt)
        start_epoch, best_f1, best_epoch, history = meta["epoch"] + 1, meta["best_f1"], meta["best_epoch"], meta["history"]
        if (run_dir / "finetune_best.safetensors").is_file():
            best_state = load_file(str(run_dir / "finetune_best.safetensors"))
    total_steps = (tc.finetune_epochs - start_epoch + 1) * len(train_loader)
    with progress_bar(total=max(total_steps, 0), description=f"fine-tune last {tc.finetune_blocks} blocks", enabled=progress) as bar:
        for epoch in range(start_epoch, tc.finetune_epochs + 1):
            model.train()
            _set_frozen_bn_eval(model)
            total, count = 0.0, 0
            for x, y in train_loader:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                total += float(loss) * len(y)
                count += len(y)
                bar.advance()
                bar.set(f"epoch {epoch} loss {total / count:.3f}")
            probs, ys = _predict(model, val_loader)
            val_f1 = float(f1_score(ys, probs.argmax(1), average="macro", labels=list(range(num_classes)), zero_division=0))
            history.append({"epoch": epoch, "loss": total / max(count, 1), "val_f1": val_f1, "val_acc": float((probs.argmax(1) == ys).mean())})
            if val_f1 > best_f1:
                best_f1, best_epoch = val_f1, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                save_file({k: v.contiguous() for k, v in best_state.items()}, str(run_dir / "finetune_best.safetensors"))
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(run_dir / RESUME_WEIGHTS))
            save_training_state(run_dir / RESUME_STATE, opt, {"epoch": epoch, "best_f1": best_f1, "best_epoch": best_epoch, "history": history})
            if epoch - best_epoch >= tc.patience:
                break
    model.load_state_dict(best_state)
    model.info.extra["finetuned"] = True
    model.info.extra["finetune_blocks"] = tc.finetune_blocks
    model.eval()
    return TrainResult(best_epoch, best_f1, history)
