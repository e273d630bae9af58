"""Hardened image reading: one code path for the CLI, the Python API and the server.

:func:`read_image` turns a PNG / JPEG / DICOM (a path or raw bytes) into an 8-bit
greyscale ``numpy`` array, or raises a subclass of :class:`ImageReadError` whose
``code`` and message say what is wrong. No DICOM patient identifier ever enters a
message: errors name the file only by the name the caller gave.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}


class ImageReadError(ValueError):
    """An input that cannot be turned into a chest X-ray array."""

    code = "unreadable"
    http_status = 422

    def __init__(self, message: str, *, source: str | None = None):
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class EmptyFileError(ImageReadError):
    code = "empty_file"


class NotAnImageError(ImageReadError):
    code = "not_an_image"
    http_status = 415


class CorruptImageError(ImageReadError):
    code = "corrupt_image"


class ImageTooLargeError(ImageReadError):
    code = "image_too_large"
    http_status = 413


class UnsupportedDicomError(ImageReadError):
    code = "unsupported_dicom"


@dataclass(frozen=True)
class ReadLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES


def _is_dicom(data: bytes, name: str) -> bool:
    return (len(data) >= 132 and data[128:132] == b"DICM") or name.lower().endswith((".dcm", ".dicom"))


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max window any numeric array to 0..255 (used for 16-bit and DICOM data)."""
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, 0.0)
    lo, hi = np.percentile(arr, 0.5), np.percentile(arr, 99.5)
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (np.clip(arr, lo, hi) - lo) / (hi - lo) * 255.0
    return np.round(out).astype(np.uint8)


def _read_dicom(data: bytes, name: str, limits: ReadLimits) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptImageError(f"not a readable DICOM file ({type(exc).__name__})", source=name) from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UnsupportedDicomError("DICOM file has no pixel data", source=name)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > limits.max_pixels:
        raise ImageTooLargeError(f"{cols}x{rows} pixels exceeds the limit of {limits.max_pixels}", source=name)
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        label = getattr(syntax, "name", str(syntax)) if syntax is not None else "unknown"
        raise UnsupportedDicomError(
            f"compressed transfer syntax '{label}' needs a decoder that is not installed "
            "(install pylibjpeg / pylibjpeg-libjpeg / python-gdcm)",
            source=name,
        ) from None
    except (ValueError, AttributeError, TypeError, EOFError, KeyError) as exc:
        raise CorruptImageError(f"DICOM pixel data cannot be decoded ({type(exc).__name__})", source=name) from None
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[0]  # multi-frame: first frame
    if pixels.ndim == 3:
        pixels = pixels[..., :3].astype(np.float64).mean(axis=-1)
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut

        pixels = apply_modality_lut(pixels, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            pixels = apply_voi_lut(pixels, ds, prefer_lut=True)
    except Exception:  # noqa: BLE001 - a broken LUT falls back to raw values
        pixels = np.asarray(pixels, dtype=np.float64)
    out = _to_uint8(pixels)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
    return out


def _read_raster(data: bytes, name: str, limits: ReadLimits) -> np.ndarray:
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data))
            except UnidentifiedImageError:
                raise NotAnImageError("not a PNG, JPEG or DICOM image", source=name) from None
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise ImageTooLargeError(
                    f"image exceeds the limit of {limits.max_pixels} pixels (decompression bomb guard)",
                    source=name,
                ) from None
            w, h = img.size
            if w * h > limits.max_pixels:
                raise ImageTooLargeError(f"{w}x{h} pixels exceeds the limit of {limits.max_pixels}", source=name)
            if w < 16 or h < 16:
                raise CorruptImageError(f"{w}x{h} pixels is too small for a chest X-ray", source=name)
            try:
                img.load()
                img = ImageOps.exif_transpose(img)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                raise CorruptImageError(f"truncated or corrupt image data ({exc})", source=name) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return _pil_to_grey(img)


def _pil_to_grey(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _to_uint8(np.asarray(img))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def read_image(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    limits: ReadLimits | None = None,
) -> np.ndarray:
    """Read one X-ray as an ``HxW`` ``uint8`` greyscale array.

    ``source`` is a path or the raw bytes of a file; ``name`` is how errors refer
    to it (defaults to the file name). Raises :class:`ImageReadError` subclasses.
    """
    limits = limits or ReadLimits()
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "upload"
    else:
        path = Path(source)
        name = name or path.name
        if not path.exists():
            raise ImageReadError("file does not exist", source=name)
        if path.is_dir():
            raise NotAnImageError("is a folder, not an image", source=name)
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise ImageTooLargeError(f"file of {size} bytes exceeds {limits.max_file_bytes}", source=name)
        data = path.read_bytes()
    if len(data) == 0:
        raise EmptyFileError("file is empty (0 bytes)", source=name)
    if len(data) > limits.max_file_bytes:
        raise ImageTooLargeError(f"file of {len(data)} bytes exceeds {limits.max_file_bytes}", source=name)
    if _is_dicom(data, name):
        return _read_dicom(data, name, limits)
    return _read_raster(data, name, limits)


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded (recursively) to their image files, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def iter_images(
    paths: Iterable[str | Path], limits: ReadLimits | None = None
) -> Iterator[tuple[Path, np.ndarray | ImageReadError]]:
    """Yield ``(path, array)`` or ``(path, error)``: one bad file never stops a batch."""
    for p in expand_paths(paths):
        try:
            yield p, read_image(p, limits=limits)
        except ImageReadError as exc:
            yield p, exc
