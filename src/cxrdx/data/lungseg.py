"""The ``lungseg`` data set: chest X-ray + lung-mask pairs for the lung segmenter.

``metadata.csv`` has one row per pair (``image``, ``mask``, ``source``, ``patient_id``; paths
relative to the folder). Images and masks are read with the hardened
:func:`~cxrdx.data.io.read_image`; masks are binarised (lung = value > 127) and only
ever resized with nearest-neighbour sampling. Splits are grouped by patient and
stratified by source, so every source is represented in every part and no patient
is in two parts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..config import default_data_root
from .io import ImageReadError, ReadLimits, read_image
from .splits import assert_no_patient_leakage

REQUIRED_COLUMNS = ("image", "mask", "source", "patient_id")
PARTS = ("train", "val", "test")


class LungsegError(ValueError):
    """A lungseg folder or manifest that cannot be used."""


def default_lungseg_root() -> Path:
    """``$CXRDX_LUNGSEG`` if set, else ``lungseg`` beside the cxr3 folder (``../shared/data/lungseg``)."""
    env = os.environ.get("CXRDX_LUNGSEG")
    return Path(env) if env else default_data_root().parent / "lungseg"


def load_lungseg(root: str | Path | None = None) -> pd.DataFrame:
    """Rows of ``metadata.csv`` with ``image`` / ``mask`` made absolute; checks columns and files exist."""
    root = Path(root) if root else default_lungseg_root()
    manifest = root / "metadata.csv"
    if not manifest.is_file():
        raise LungsegError(f"{manifest} not found: pass --data DIR (a lungseg folder) or set $CXRDX_LUNGSEG")
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise LungsegError(f"{manifest} lacks column(s) {', '.join(missing)}")
    if df.empty:
        raise LungsegError(f"{manifest} has no rows")
    empty = df[[*REQUIRED_COLUMNS]].eq("").any(axis=1)
    if empty.any():
        raise LungsegError(f"{manifest}: {int(empty.sum())} row(s) with an empty image, mask, source or patient_id")
    df = df.copy()
    df["name"] = df["image"]
    df["image"] = [str(root / p) for p in df["image"]]
    df["mask"] = [str(root / p) for p in df["mask"]]
    absent = [p for p in pd.concat([df["image"], df["mask"]]) if not Path(p).is_file()]
    if absent:
        raise LungsegError(f"{len(absent)} file(s) listed in {manifest} are missing, e.g. {absent[0]}")
    return df.reset_index(drop=True)


def _group_fold(df: pd.DataFrame, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One fold of a StratifiedGroupKFold (groups = patients, strata = sources): ``(rest, held)`` positions."""
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0.0 < fraction < 1.0:
        raise LungsegError(f"split fraction must be in (0, 1), got {fraction}")
    n_splits = max(2, int(round(1.0 / fraction)))
    if df["patient_id"].nunique() < n_splits:
        raise LungsegError(f"{df['patient_id'].nunique()} patients are too few for a {fraction:.0%} patient split")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rest, held = next(folds.split(df, df["source"], groups=df["patient_id"]))
    return rest, held


def split_lungseg(
    df: pd.DataFrame, *, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0,
) -> pd.DataFrame:
    """``df`` plus a ``part`` column (train / val / test), grouped by patient, stratified by source."""
    df = df.reset_index(drop=True).copy()
    rest, test = _group_fold(df, test_fraction, seed)
    part = np.full(len(df), "train", dtype=object)
    part[test] = "test"
    if val_fraction > 0:
        rest_df = df.iloc[rest].reset_index(drop=True)
        _, val = _group_fold(rest_df, val_fraction / (1.0 - test_fraction), seed + 1)
        part[rest[val]] = "val"
    df["part"] = part
    assert_no_patient_leakage(*(df[df["part"] == p] for p in PARTS))
    return df


def read_mask(path: str | Path, *, limits: ReadLimits | None = None) -> np.ndarray:
    """A lung mask as an ``HxW`` bool array (lung = grey value > 127)."""
    return read_image(path, limits=limits) > 127


def read_pair(image: str | Path, mask: str | Path, *, limits: ReadLimits | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 image, bool mask)`` of the same size, or an :class:`ImageReadError`."""
    grey = read_image(image, limits=limits)
    lungs = read_mask(mask, limits=limits)
    if grey.shape != lungs.shape:
        raise ImageReadError(f"mask {lungs.shape} and image {grey.shape} differ in size", source=Path(mask).name)
    return grey, lungs


def resize_image(grey: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 image to ``size`` (square side or ``(height, width)``)."""
    h, w = (size, size) if isinstance(size, int) else size
    return np.asarray(Image.fromarray(grey).resize((w, h), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask (never interpolates labels)."""
    h, w = (size, size) if isinstance(size, int) else size
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((w, h), Image.NEAREST)) > 127


def load_arrays(
    df: pd.DataFrame, size: int, *, limits: ReadLimits | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of ``df`` at ``size x size``: ``uint8 (N, S, S)`` images and ``uint8 (N, S, S)`` 0/1 masks."""
    images = np.empty((len(df), size, size), dtype=np.uint8)
    masks = np.empty((len(df), size, size), dtype=np.uint8)
    for i, (img_path, mask_path) in enumerate(zip(df["image"], df["mask"])):
        grey, lungs = read_pair(img_path, mask_path, limits=limits)
        images[i] = resize_image(grey, size)
        masks[i] = resize_mask(lungs, size)
    return images, masks
