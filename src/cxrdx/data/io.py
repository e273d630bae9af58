"""Hardened image reading: one code path for the CLI, the Python API and the server.

:func:`read_image` turns a PNG / JPEG / DICOM (a path or raw bytes) into an 8-bit
greyscale ``numpy`` array, or raises a subclass of :class:`ImageReadError` whose
``code``, ``http_status`` and message say what is wrong. Nothing else escapes it:
a corrupt, truncated, empty, oversized or foreign file is always a typed error, so
one bad file never stops a batch (:func:`iter_images`).

This module is the front; the work is done by

* :mod:`cxrdx.data.errors`: the error types, :class:`ReadLimits`;
* :mod:`cxrdx.data.paths`: suffixes, folder expansion, bounded file reading;
* :mod:`cxrdx.data.raster`: PNG / JPEG / BMP / TIFF ... via Pillow;
* :mod:`cxrdx.data.dicom` and :mod:`cxrdx.data.dicom_lut`: DICOM via pydicom.

Privacy: no DICOM patient identifier ever enters a message or a log line (see
:mod:`cxrdx.data.dicom`); errors name the file only by the name the caller gave.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .dicom import DICOM_TAGS, deidentified_dicom_summary, read_dicom
from .dicom import looks_like_dicom as _looks_like_dicom  # a module global: tests replace it
from .errors import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    MIN_SIDE,
    CorruptImageError,
    EmptyFileError,
    FileAccessError,
    ImageReadError,
    ImageTooLargeError,
    ImageTooSmallError,
    MissingFileError,
    NotAnImageError,
    ReadLimits,
    UnsupportedDicomError,
)
from .paths import DICOM_SUFFIXES, IMAGE_SUFFIXES, expand_paths, load_bytes
from .raster import RASTER_FORMATS, read_raster

__all__ = [
    "DEFAULT_MAX_FILE_BYTES", "DEFAULT_MAX_PIXELS", "DICOM_SUFFIXES", "DICOM_TAGS", "IMAGE_SUFFIXES",
    "MIN_SIDE", "RASTER_FORMATS", "CorruptImageError", "EmptyFileError", "FileAccessError", "ImageReadError",
    "ImageTooLargeError", "ImageTooSmallError", "MissingFileError", "NotAnImageError", "ReadLimits",
    "UnsupportedDicomError", "deidentified_dicom_summary", "expand_paths", "iter_images", "read_image",
]

logger = logging.getLogger(__name__)


def read_image(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    limits: ReadLimits | None = None,
) -> np.ndarray:
    """Read one X-ray as an ``HxW`` ``uint8`` greyscale array.

    ``source`` is a path or the raw bytes of a file; ``name`` is how errors refer
    to it (defaults to the file name). Raises only :class:`ImageReadError`
    subclasses (a ``MemoryError`` becomes :class:`ImageTooLargeError`).
    """
    limits = limits or ReadLimits()
    label = name or ("upload" if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).name)
    try:
        data, label = load_bytes(source, name, limits)
        if _looks_like_dicom(data, label):
            return read_dicom(data, label, limits)
        return read_raster(data, label, limits)
    except ImageReadError as exc:
        logger.debug("cannot read %s: %s", label, exc.code)
        raise
    except MemoryError:
        logger.debug("cannot read %s: out of memory", label)
        raise ImageTooLargeError("not enough memory to read the image", source=label) from None
    except Exception as exc:  # noqa: BLE001 - last line of defence: one bad file never stops a batch
        logger.debug("cannot read %s: unexpected %s", label, type(exc).__name__)
        raise CorruptImageError(f"unreadable image ({type(exc).__name__})", source=label) from None


def iter_images(
    paths: Iterable[str | Path], limits: ReadLimits | None = None
) -> Iterator[tuple[Path, np.ndarray | ImageReadError]]:
    """Yield ``(path, array)`` or ``(path, error)``: one bad file never stops a batch."""
    for p in expand_paths(paths):
        try:
            yield p, read_image(p, limits=limits)
        except ImageReadError as exc:
            yield p, exc
