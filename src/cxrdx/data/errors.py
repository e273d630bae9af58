"""What can go wrong when reading an image, and the limits that guard against hostile files.

Every failure of :func:`cxrdx.data.io.read_image` is a subclass of
:class:`ImageReadError` whose ``code`` and ``http_status`` say what is wrong (the
server answers with them). :class:`ReadLimits` bounds the memory a single file may
take; :func:`check_size` enforces it on a decoded header, before any pixel is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_DECODED_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_ASPECT_RATIO = 10.0
MIN_SIDE = 16


class ImageReadError(ValueError):
    """An input that cannot be turned into a chest X-ray array."""

    code = "unreadable"
    http_status = 422

    def __init__(self, message: str, *, source: str | None = None):
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}" if source else message)


class FileAccessError(ImageReadError):
    """The path exists but cannot be read (permissions, I/O error, not a regular file)."""

    code = "file_unreadable"


class MissingFileError(FileAccessError):
    code = "file_not_found"
    http_status = 404


class EmptyFileError(ImageReadError):
    code = "empty_file"


class NotAnImageError(ImageReadError):
    code = "not_an_image"
    http_status = 415


class CorruptImageError(ImageReadError):
    code = "corrupt_image"


class ImageTooSmallError(CorruptImageError):
    code = "image_too_small"


class ImageAspectError(CorruptImageError):
    """Width / height far outside anything a radiograph has."""

    code = "bad_aspect_ratio"


class ImageTooLargeError(ImageReadError):
    code = "image_too_large"
    http_status = 413


class UnsupportedDicomError(ImageReadError):
    code = "unsupported_dicom"


@dataclass(frozen=True)
class ReadLimits:
    """The decode budget of one file, checked from its header before any pixel memory is spent."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images with more pixels (width x height) are refused: decompression-bomb guard."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    """Pixels x bytes per pixel of the decoded image (and the inflated size of a deflated DICOM
    data set). Larger JPEGs are downscaled while decoding (DCT scaling); other formats are refused."""
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    """Long side / short side above this is refused (a 16 x 4,000,000 strip is not an X-ray)."""

    @classmethod
    def from_config(cls, data_cfg: Any, max_file_bytes: int | None = None) -> "ReadLimits":
        """The limits of a :class:`cxrdx.config.DataConfig` (``max_file_bytes`` overrides its own)."""
        return cls(
            max_pixels=data_cfg.max_pixels,
            max_file_bytes=data_cfg.max_file_bytes if max_file_bytes is None else max_file_bytes,
            max_decoded_bytes=getattr(data_cfg, "max_decoded_bytes", DEFAULT_MAX_DECODED_BYTES),
            max_aspect_ratio=getattr(data_cfg, "max_aspect_ratio", DEFAULT_MAX_ASPECT_RATIO),
        )


def check_size(w: int, h: int, name: str, limits: ReadLimits, bytes_per_pixel: int | None = None) -> None:
    """Refuse an image too large for ``limits``, too elongated, or too small to be a chest X-ray.

    With ``bytes_per_pixel`` the decoded size (``w * h * bytes_per_pixel``) is checked
    against ``limits.max_decoded_bytes`` too.
    """
    if w * h > limits.max_pixels:
        raise ImageTooLargeError(
            f"{w}x{h} pixels exceeds the limit of {limits.max_pixels} pixels", source=name
        )
    if w < MIN_SIDE or h < MIN_SIDE:
        raise ImageTooSmallError(f"{w}x{h} pixels is too small for a chest X-ray", source=name)
    if max(w, h) > limits.max_aspect_ratio * min(w, h):
        raise ImageAspectError(
            f"{w}x{h} pixels: aspect ratio {max(w, h) / min(w, h):.0f}:1 exceeds the limit of "
            f"{limits.max_aspect_ratio:g}:1 for a chest X-ray", source=name,
        )
    if bytes_per_pixel is not None:
        check_decoded_bytes(w, h, bytes_per_pixel, name, limits)


def check_decoded_bytes(w: int, h: int, bytes_per_pixel: int, name: str, limits: ReadLimits) -> None:
    need = w * h * bytes_per_pixel
    if need > limits.max_decoded_bytes:
        raise ImageTooLargeError(
            f"{w}x{h} pixels at {bytes_per_pixel} byte(s) per pixel would take {need} bytes to decode, "
            f"over the limit of {limits.max_decoded_bytes} bytes", source=name,
        )
