"""Where the heatmaps fall: energy inside lung / lesion masks and the pointing game.

For one image with heatmap ``h`` (``H x W``, values >= 0) and a binary mask ``m``:

* **energy inside** = ``sum(h * m) / sum(h)``: the share of the heat on the mask.
  Uniform heat scores the mask's area fraction (the *chance* level, reported beside it).
* **pointing game** = is ``argmax(h)`` inside the mask (1 / 0)?

Summaries are means over images with a percentile CI from a bootstrap that
resamples *patients* (all images of a drawn patient go in together):
:func:`cxrdx.stats.bootstrap.patient_mean_ci`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def load_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Binary mask (``> 0``) as ``bool`` ``H x W``, resized (nearest) to ``shape`` when it differs."""
    with Image.open(path) as img:
        img = img.convert("L")
        if img.size != (shape[1], shape[0]):
            img = img.resize((shape[1], shape[0]), Image.Resampling.NEAREST)
        return np.asarray(img) > 0


def _check(heatmap: np.ndarray, mask: np.ndarray) -> None:
    if heatmap.shape != mask.shape:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} differ in size")


def energy_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's total (non-negative) energy inside ``mask``; NaN for an all-zero heatmap."""
    _check(heatmap, mask)
    h = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    total = h.sum()
    return float(h[mask.astype(bool)].sum() / total) if total > 0 else math.nan


def peak_inside(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """Pointing game: does the heatmap's maximum (first one in row-major order) lie inside ``mask``?"""
    _check(heatmap, mask)
    r, c = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return bool(mask[r, c])


def area_fraction(mask: np.ndarray) -> float:
    """Fraction of the image the mask covers = the energy a uniform heatmap would put inside it."""
    return float(np.asarray(mask, dtype=bool).mean())
