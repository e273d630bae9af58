"""Which model is served: a stable id and a content-derived version for every run folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..training.checkpoint import INFO_FILE, WEIGHTS_FILE, CheckpointError


@dataclass(frozen=True)
class ModelIdentity:
    id: str
    """``backbone+head``, e.g. ``tf_efficientnet_lite0+bilstm``."""
    version: str
    """``sha256:`` + first 16 hex digits of the SHA-256 of model.json and model.safetensors."""
    run: str
    """The run folder's name."""


def model_identity(run_dir: str | Path) -> ModelIdentity:
    run_dir = Path(run_dir)
    info_path, weights_path = run_dir / INFO_FILE, run_dir / WEIGHTS_FILE
    if not info_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{run_dir} is not a cxrdx model folder (needs {INFO_FILE} and {WEIGHTS_FILE})")
    digest = hashlib.sha256()
    for path in (info_path, weights_path):
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    info = json.loads(info_path.read_text())
    return ModelIdentity(
        id=f"{info['backbone']}+{info['head']}",
        version=f"sha256:{digest.hexdigest()[:16]}",
        run=run_dir.resolve().name,
    )
