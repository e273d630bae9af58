"""DICOM stored values to 8-bit display values.

The modality LUT (Rescale Slope / Intercept, or a Modality LUT Sequence), then the
VOI LUT Sequence or Window Center / Width (LINEAR, LINEAR_EXACT, SIGMOID) are
applied; without a VOI transform, data over 8 bit are percentile windowed;
MONOCHROME1 is inverted so that bone is always bright. A broken LUT or window is
skipped (logged by exception type only, never by value), not fatal.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .pixels import luma, to_uint8

logger = logging.getLogger(__name__)


def _first_number(value: Any) -> float:
    from pydicom.multival import MultiValue

    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0]
    return float(value)


def apply_window(arr: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing straight to 0..255 (float)."""
    x = np.asarray(arr, dtype=np.float64)
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        lo, hi = center - width / 2.0, center + width / 2.0
        y = ((x - center) / width + 0.5) * 255.0
    else:  # LINEAR (the default)
        if width < 1:
            raise ValueError("LINEAR window width below 1")
        lo = center - 0.5 - (width - 1) / 2.0
        hi = center - 0.5 + (width - 1) / 2.0
        y = ((x - (center - 0.5)) / max(width - 1, 1e-9) + 0.5) * 255.0
    y = np.where(x <= lo, 0.0, np.where(x > hi, 255.0, y))
    return np.clip(y, 0.0, 255.0)


def _voi_to_uint8(arr: np.ndarray, ds: Any, stored_8bit: bool) -> np.ndarray:
    """VOI LUT Sequence, else Window Center/Width, else a fallback window."""
    from pydicom.pixels import apply_voi

    if ds.get("VOILUTSequence"):
        try:
            item = ds.VOILUTSequence[0]
            depth = int(item.LUTDescriptor[2])
            ints = np.rint(np.asarray(arr, dtype=np.float64)).astype(np.int64)
            out = np.asarray(apply_voi(ints, ds), dtype=np.float64)
            top = float(2**depth - 1) if 1 <= depth <= 16 else float(out.max() or 1.0)
            return np.round(np.clip(out / top * 255.0, 0, 255)).astype(np.uint8)
        except Exception as exc:  # noqa: BLE001 - broken LUT: fall through to the window
            logger.debug("ignoring an unusable VOI LUT Sequence (%s)", type(exc).__name__)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center = _first_number(ds.WindowCenter)
            width = _first_number(ds.WindowWidth)
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
            if not (np.isfinite(center) and np.isfinite(width) and width > 0):
                raise ValueError("window outside its domain")
            return np.round(apply_window(arr, center, width, function)).astype(np.uint8)
        except Exception as exc:  # noqa: BLE001 - broken window: fall back
            logger.debug("ignoring an unusable Window Center/Width (%s)", type(exc).__name__)
    arr = np.asarray(arr)
    if stored_8bit and arr.size and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 255:
        return np.asarray(arr, dtype=np.uint8)  # already 8-bit display values
    return to_uint8(arr)


def dicom_to_uint8(pixels: np.ndarray, ds: Any) -> np.ndarray:
    """Decoded pixel data of ``ds`` (one frame) as an ``HxW`` ``uint8`` display image."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 3:  # colour: RGB (pydicom converts YBR to RGB), no LUTs apply
        bits = int(ds.get("BitsStored", 8) or 8)
        if photometric == "PALETTE COLOR" or bits > 8:
            return to_uint8(luma(pixels))
        return np.round(np.clip(luma(pixels), 0, 255)).astype(np.uint8)
    if pixels.ndim != 2:
        raise ValueError(f"unexpected pixel array of {pixels.ndim} dimensions")
    try:
        values = apply_modality_lut(pixels, ds)
    except Exception as exc:  # noqa: BLE001 - a broken modality LUT: use stored values
        logger.debug("ignoring an unusable modality LUT (%s)", type(exc).__name__)
        values = pixels
    values = np.asarray(values)
    stored_8bit = (
        int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16) <= 8
        and "ModalityLUTSequence" not in ds
        and float(ds.get("RescaleSlope", 1) or 1) == 1.0
        and float(ds.get("RescaleIntercept", 0) or 0) == 0.0
    )
    out = _voi_to_uint8(values, ds, stored_8bit)
    if photometric == "MONOCHROME1":  # 0 is white: invert so that bone is bright
        out = 255 - out
    return np.ascontiguousarray(out)
