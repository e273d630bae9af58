"""Finished cross-validation folds kept on disk, so that an interrupted ``cxrdx cv`` / ``compare`` resumes.

Every fold that finishes is written to ``OUT/folds/`` (one ``.npz`` of its validation, test and shortcut-control
probabilities plus a few JSON fields; no pickle). Running the same command with the same ``--out`` again reuses a
stored fold only when everything that decides it is the same, hashed into the file's key:

* cxrdx's own code (every ``.py`` file of the installed package),
* the input (the feature maps, their shortcut-control and mirrored variants, the manifest rows and classes),
* the candidate, the fold's train / validation / test rows,
* the settings (model, training, evaluation, and the full config when fine-tuning).

So a stored fold is exactly what recomputing it would give (every fold is seeded); change any of these and the
fold is recomputed. Delete ``OUT/folds`` to force a full rerun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

STORE_DIR = "folds"
_EXTRA = "extra__"


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over cxrdx's Python source files (path and content), so that a code change invalidates stored folds."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def array_digest(*arrays: np.ndarray | None) -> str:
    """blake2b over the arrays' dtype, shape and bytes (None counts as absent)."""
    h = hashlib.blake2b(digest_size=20)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}|{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def rows_digest(manifest: pd.DataFrame) -> str:
    """The rows a run scores: their image, label target and grouping columns, in order."""
    cols = [c for c in ("image", "target", "patient_id", "source") if c in manifest.columns]
    return hashlib.sha256(manifest[cols].to_csv(index=False).encode()).hexdigest()


def json_default(value):
    """``json.dumps(default=...)`` for what evaluation results hold: numpy scalars and arrays, dataclasses, paths,
    and objects with ``to_dict()``."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


class FoldStore:
    """``OUT/folds/``: one file per finished fold, found again by a key over everything that decides it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.reused = 0
        """Folds answered from disk in this process (reported by ``cxrdx cv`` / ``compare``)."""

    def key(self, *, candidate, classes, data: str, settings: dict, fold: int, train, val, test) -> str:
        spec = {"code": code_digest(), "data": data, "candidate": dataclasses.asdict(candidate), "classes": list(classes),
                "settings": settings, "fold": fold, "rows": array_digest(np.asarray(train), np.asarray(val), np.asarray(test))}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=json_default).encode()).hexdigest()

    def _path(self, candidate, fold: int, key: str) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "+-_." else "_" for ch in candidate.name)
        return self.root / f"{safe}-fold{fold}-{key[:20]}.npz"

    def load(self, candidate, fold: int, key: str) -> dict | None:
        """The stored fold's fields, or None (absent, or unreadable: then it is recomputed)."""
        path = self._path(candidate, fold, key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("key") != key:
                    return None
                extra = {name[len(_EXTRA):]: z[name] for name in z.files if name.startswith(_EXTRA)}
                tta = (z["tta_val"], z["tta_test"]) if "tta_val" in z.files else None
                out = {"val_probs": z["val_probs"], "test_probs": z["test_probs"], "extra_probs": extra,
                       "tta_probs": tta, "val_f1": float(meta["val_f1"]), "info": meta["info"],
                       "seconds": float(meta["seconds"])}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None
        self.reused += 1
        return out

    def save(self, candidate, fold, key: str) -> None:
        """Write a finished :class:`~cxrdx.evaluation.cv.FoldPrediction` (atomically: a killed run leaves no half file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        arrays = {"val_probs": fold.val_probs, "test_probs": fold.test_probs,
                  **{f"{_EXTRA}{k}": v for k, v in fold.extra_probs.items()}}
        if fold.tta_probs is not None:
            arrays["tta_val"], arrays["tta_test"] = fold.tta_probs
        meta = {"key": key, "candidate": candidate.name, "fold": fold.fold, "val_f1": fold.val_f1,
                "info": fold.info, "seconds": fold.seconds}
        path = self._path(candidate, fold.fold, key)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, meta=np.array(json.dumps(meta, default=json_default)), **arrays)
        os.replace(tmp, path)
