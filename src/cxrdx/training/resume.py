"""Training state for ``cxrdx train --resume``: optimizer state as safetensors + JSON. No pickle.

A trained model itself is saved and loaded by :mod:`cxrdx.models.run`
(``save_run`` / ``load_run``); this module only keeps what an interrupted
fine-tuning run needs to continue.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


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
