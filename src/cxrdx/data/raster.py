"""Raster images (PNG, JPEG, BMP, TIFF, GIF, WEBP) to 8-bit greyscale, via Pillow.

* 16-bit / 32-bit / float rasters are windowed to 8 bit (0.5-99.5 percentile).
* RGBA, LA, PA and palette images with transparency are composited on black.
* Colour (RGB, CMYK, YCbCr, palette ...) becomes luma; EXIF orientation is applied.
"""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import (
    CorruptImageError,
    ImageTooLargeError,
    NotAnImageError,
    ReadLimits,
    check_decoded_bytes,
    check_size,
)
from .pixels import to_uint8

# Pillow decoders we let near untrusted bytes (JPEG includes MPO). Everything else
# (EPS, which runs Ghostscript; PSD; ICNS ...) is refused as "not an image".
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")

RASTER_MAGIC = (
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"\xff\xd8\xff",  # JPEG
    b"BM",  # BMP
    b"II*\x00",  # TIFF little endian
    b"MM\x00*",  # TIFF big endian
    b"GIF8",  # GIF
)

# Bytes per pixel of Pillow's in-memory storage (every other mode takes 4: RGB is stored as RGBX).
_PIL_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I;16S": 2,
                        "BGR;15": 2, "BGR;16": 2, "BGR;24": 3}

# Image.MAX_IMAGE_PIXELS is process-global: set it per call only under this lock.
_PIL_LOCK = threading.Lock()


def _short(exc: BaseException, limit: int = 120) -> str:
    """A third-party exception's text, cut short (rasters only, never DICOM)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text[:limit]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _raster_formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in RASTER_FORMATS if f in Image.OPEN)  # a Pillow build may lack WEBP


def _open_raster(data: bytes, name: str, limits: ReadLimits) -> Image.Image:
    """Parse the header only; Pillow's bomb guard runs with ``limits.max_pixels``."""
    formats = _raster_formats()
    with _PIL_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limits.max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                return Image.open(io.BytesIO(data), formats=formats)
        except UnidentifiedImageError:
            raise NotAnImageError("not a PNG, JPEG or DICOM image", source=name) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageTooLargeError(
                f"image exceeds the limit of {limits.max_pixels} pixels (decompression bomb guard)",
                source=name,
            ) from None
        except MemoryError:
            raise ImageTooLargeError("not enough memory to open the image", source=name) from None
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a corrupt file
            raise CorruptImageError(f"unreadable image header ({_short(exc)})", source=name) from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def decoded_bytes_per_pixel(mode: str) -> int:
    """What one pixel of a Pillow image of ``mode`` takes in memory once decoded."""
    return _PIL_BYTES_PER_PIXEL.get(mode, 4)


def _fit_budget(img: Image.Image, name: str, limits: ReadLimits) -> None:
    """Check the decoded size from the header; a JPEG over budget is decoded at 1/2, 1/4 or 1/8 scale.

    Runs before ``img.load()``: nothing of the pixel data has been allocated yet.
    """
    w, h = img.size
    if w * h * decoded_bytes_per_pixel(img.mode) <= limits.max_decoded_bytes:
        return
    if img.format == "JPEG":
        for scale in (2, 4, 8):  # DCT scaling: the decoder never builds the full-size image
            if -(-w // scale) * -(-h // scale) <= limits.max_decoded_bytes:  # the size libjpeg gives
                img.draft("L", (w // scale, h // scale))  # colour JPEGs decode straight to luma
                break
    check_decoded_bytes(*img.size, decoded_bytes_per_pixel(img.mode), name, limits)


def read_raster(data: bytes, name: str, limits: ReadLimits) -> np.ndarray:
    """Decode a raster file's bytes to an ``HxW`` ``uint8`` array, or raise an ImageReadError."""
    img = _open_raster(data, name, limits)
    w, h = img.size
    check_size(w, h, name, limits)
    try:
        _fit_budget(img, name, limits)
    except ImageTooLargeError:
        raise
    except Exception as exc:  # noqa: BLE001 - draft() on a broken header
        raise CorruptImageError(f"unreadable image header ({_short(exc)})", source=name) from None
    try:
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return pil_to_grey(img)
    except MemoryError:
        raise ImageTooLargeError("not enough memory to decode the image", source=name) from None
    except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, ValueError, zlib.error ...
        raise CorruptImageError(f"truncated or corrupt image data ({_short(exc)})", source=name) from None


def pil_to_grey(img: Image.Image) -> np.ndarray:
    """Any Pillow image as 8-bit greyscale (windowed, alpha composited on black, colour to luma)."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":  # I, I;16, I;16B, I;16L, I;16N, I;16S ...
        return to_uint8(np.asarray(img))
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "L":
        try:
            img = img.convert("L")
        except ValueError:  # e.g. LAB / HSV have no direct conversion to L
            img = img.convert("RGB").convert("L")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
