"""Checkpoints: safetensors weights plus a JSON description. No pickle anywhere.

A run folder holds ``model.safetensors`` and ``model.json``. When the backbone
is frozen at reproducible weights (``imagenet`` / ``none``) only the head is
stored and the backbone is rebuilt from its source; after fine-tuning (or for
weights from a file) the whole model is stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..models.factory import create_model_from_info
from ..models.hybrid import HybridModel, ModelInfo

WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "model.json"


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(model: HybridModel, run_dir: str | Path, *, include_backbone: bool | None = None) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if include_backbone is None:
        include_backbone = model.info.weights not in ("imagenet", "none") or bool(model.info.extra.get("finetuned"))
    state = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    if include_backbone:
        state.update({f"backbone.{k}": v for k, v in model.backbone.state_dict().items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(run_dir / WEIGHTS_FILE))
    meta = model.info.to_dict()
    meta["backbone_in_checkpoint"] = include_backbone
    (run_dir / INFO_FILE).write_text(json.dumps(meta, indent=2))
    return run_dir / WEIGHTS_FILE


def load_checkpoint(path: str | Path) -> HybridModel:
    """Rebuild a model from a run folder (or its ``model.safetensors``)."""
    path = Path(path)
    run_dir = path.parent if path.is_file() else path
    info_path, weights_path = run_dir / INFO_FILE, run_dir / WEIGHTS_FILE
    if not info_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{run_dir} is not a cxrdx model folder (needs {INFO_FILE} and {WEIGHTS_FILE}); train one with `cxrdx train`")
    meta = json.loads(info_path.read_text())
    in_ckpt = bool(meta.pop("backbone_in_checkpoint", False))
    info = ModelInfo(**meta)
    model = create_model_from_info(info, weights="none" if in_ckpt else info.weights)
    model.info = info
    state = load_file(str(weights_path))
    model.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")}, strict=True)
    if in_ckpt:
        model.backbone.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("backbone.")}, strict=True)
    model.eval()
    return model


def save_training_state(path: Path, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    """Optimizer state as safetensors (tensors) + JSON (scalars and param groups), for resume."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entries in sd["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = value
    save_file(tensors, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps({"param_groups": sd["param_groups"], "scalars": scalars, "meta": meta}))


def load_training_state(path: Path, optimizer: torch.optim.Optimizer) -> dict:
    raw = json.loads(path.with_suffix(".json").read_text())
    tensors = load_file(str(path.with_suffix(".safetensors")))
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(raw["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": raw["param_groups"]})
    return raw["meta"]
