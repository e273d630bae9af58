"""Cached backbone maps for every row of a manifest, in manifest order."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..features.cache import extract_features
from ..features.roi import RegionOfInterest
from ..models.factory import create_model
from ..models.hybrid import HybridModel
from ..models.weights import WeightsUnavailableError

_MODELS: dict[tuple[str, str, int], HybridModel] = {}
_UNAVAILABLE: dict[tuple[str, str], WeightsUnavailableError] = {}


def backbone_model(backbone: str, weights: str = "imagenet", image_size: int = 224) -> HybridModel:
    """A (cached) frozen backbone; raises ``WeightsUnavailableError`` when its weights are not available offline."""
    key = (backbone, weights, image_size)
    if (backbone, weights) in _UNAVAILABLE:
        raise _UNAVAILABLE[(backbone, weights)]
    if key not in _MODELS:
        try:
            _MODELS[key] = create_model(backbone, "pool", weights=weights, image_size=image_size)
        except WeightsUnavailableError as exc:
            _UNAVAILABLE[(backbone, weights)] = exc
            raise
    return _MODELS[key]


def feature_maps(
    manifest: pd.DataFrame,
    cache_dir: str | Path,
    *,
    backbone: str = "tf_efficientnet_lite0",
    weights: str = "imagenet",
    image_size: int = 224,
    variant: str = "plain",
    image_fn: Callable | None = None,
    roi: RegionOfInterest | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, pd.DataFrame]:
    """``[N, C, S/32, S/32]`` float16 maps and the rows that could be read (unreadable rows are dropped).
    ``roi``: the region of interest (None = the whole image)."""
    model = backbone_model(backbone, weights, image_size)
    fs = extract_features(model, manifest, cache_dir, variant=variant, image_fn=image_fn, roi=roi, progress=progress)
    return fs.features, fs.manifest


def aligned(maps: np.ndarray, kept: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Rows of ``maps`` (indexed like ``kept``) in the order of ``rows`` (by image path)."""
    pos = {p: i for i, p in enumerate(kept["image"])}
    return maps[np.array([pos[p] for p in rows["image"]], dtype=int)]
