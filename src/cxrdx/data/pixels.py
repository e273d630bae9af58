"""Pixel-value conversions shared by the raster and DICOM readers."""

from __future__ import annotations

import numpy as np


_CHUNK = 1 << 20  # elements scaled per step: float temporaries stay ~8 MB whatever the image size


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Window any numeric array to 0..255 between its 0.5 and 99.5 percentiles.

    Integer arrays are never copied to float64 as a whole (the percentiles of the
    integers are the same numbers), and the scaling runs in chunks, so the memory
    spent is about twice the input plus the ``uint8`` output.
    """
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        arr = np.asarray(arr, dtype=np.float64)
        finite = np.isfinite(arr)
        if not finite.all():
            arr = np.where(finite, arr, 0.0)
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = (float(v) for v in np.percentile(arr, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    flat = arr.reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint8)
    for start in range(0, flat.size, _CHUNK):
        part = np.clip(flat[start:start + _CHUNK].astype(np.float64), lo, hi)
        part -= lo
        part /= hi - lo
        part *= 255.0
        out[start:start + _CHUNK] = np.round(part)
    return out.reshape(arr.shape)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an ``HxWx3`` array, as float."""
    rgb = np.asarray(rgb, dtype=np.float64)[..., :3]
    return rgb @ np.array([0.299, 0.587, 0.114])
