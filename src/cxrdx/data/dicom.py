"""DICOM files to 8-bit greyscale, via pydicom, without ever reading a patient identifier.

Files are parsed with an allow-list of technical tags (:data:`DICOM_TAGS`), so
patient / study elements are never even decoded; errors describe failures by
exception *type*, never by the text of a pydicom exception (which may quote
values). Multi-frame files give their first frame; values become display values
in :mod:`cxrdx.data.dicom_lut`.
"""

from __future__ import annotations

import io
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .dicom_lut import dicom_to_uint8
from .errors import (
    CorruptImageError,
    ImageTooLargeError,
    NotAnImageError,
    ReadLimits,
    UnsupportedDicomError,
    check_size,
)
from .paths import DICOM_SUFFIXES, load_bytes
from .raster import RASTER_MAGIC

# The only DICOM elements ever parsed: pixel description, LUTs and pixel data.
DICOM_TAGS = (
    "Modality", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "RescaleIntercept",
    "RescaleSlope", "RescaleType", "ModalityLUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "VOILUTSequence", "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "FloatPixelData", "DoubleFloatPixelData", "PixelData",
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_NOT_AN_IMAGE = "not a PNG, JPEG or DICOM image"

# pydicom logs a full traceback (logger.exception) for every frame that a decoding
# plugin fails on; we turn that failure into one typed error, so its own log
# records are dropped while *this thread* is inside a DICOM read.
_PYDICOM_LOGGERS = ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils")
_LOCAL = threading.local()


class _QuietInThisThread(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_LOCAL, "quiet", 0)


_QUIET_FILTER = _QuietInThisThread()


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    for logger_name in _PYDICOM_LOGGERS:
        logging.getLogger(logger_name).addFilter(_QUIET_FILTER)  # idempotent
    _LOCAL.quiet = getattr(_LOCAL, "quiet", 0) + 1
    try:
        yield
    finally:
        _LOCAL.quiet -= 1


def _has_magic(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def looks_like_dicom(data: bytes, name: str) -> bool:
    if _has_magic(data):
        return True
    if data.startswith(RASTER_MAGIC) or data[:4] == b"RIFF":
        return False
    # A bare dataset without preamble starts with group 0x0002 or 0x0008.
    return name.lower().endswith(DICOM_SUFFIXES) or data[:2] in (b"\x02\x00", b"\x08\x00")


# Room for the non-pixel elements of a deflated data set, on top of limits.max_decoded_bytes.
DEFLATE_SLACK_BYTES = 4 * 1024 * 1024


def check_deflated_size(data: bytes, name: str, limits: ReadLimits) -> None:
    """Refuse a Deflated Explicit VR Little Endian file whose data set inflates past the budget.

    pydicom inflates the whole data set in one call; this inflates it first with a cap
    (``limits.max_decoded_bytes`` + :data:`DEFLATE_SLACK_BYTES`), so a 1.6 MB file that
    inflates to gigabytes is refused after spending at most the cap.
    """
    import zlib

    from pydicom import uid as dicom_uid
    from pydicom.filereader import _read_file_meta_info, read_preamble

    if dicom_uid.DeflatedExplicitVRLittleEndian.encode() not in data[:65536]:
        return  # the UID is in the file meta group, near the start
    try:
        fp = io.BytesIO(data)
        read_preamble(fp, True)
        meta = _read_file_meta_info(fp)
        syntax = str(meta.get("TransferSyntaxUID", "")).strip().rstrip("\x00")
    except Exception:  # noqa: BLE001 - a broken meta group: _parse_dicom reports it
        return
    if syntax != dicom_uid.DeflatedExplicitVRLittleEndian:
        return
    cap = limits.max_decoded_bytes + DEFLATE_SLACK_BYTES
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending: bytes | memoryview = memoryview(data)[fp.tell():]
    inflated = 0
    try:  # 1 MiB at a time, counted and dropped: the check itself costs ~1 MiB
        while inflated <= cap and not inflater.eof:
            chunk = inflater.decompress(pending, 1 << 20)
            pending = inflater.unconsumed_tail
            if not chunk and not pending:
                break
            inflated += len(chunk)
    except zlib.error:
        raise CorruptImageError("deflated DICOM data set cannot be inflated (zlib error)", source=name) from None
    if inflated > cap:
        raise ImageTooLargeError(
            f"deflated DICOM data set inflates to more than {cap} bytes (limit: max_decoded_bytes + "
            f"{DEFLATE_SLACK_BYTES}); refused before inflating it", source=name,
        )


def _parse_dicom(data: bytes, name: str, limits: ReadLimits) -> Any:
    """Parse only :data:`DICOM_TAGS` (+ file meta); typed errors without any DICOM text."""
    import pydicom
    from pydicom import uid as dicom_uid

    has_magic = _has_magic(data)
    check_deflated_size(data, name, limits)
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data),
            force=True,
            specific_tags=list(DICOM_TAGS),
        )
        present = [k for k in DICOM_TAGS if k in ds]
    except MemoryError:
        raise ImageTooLargeError("not enough memory to parse the DICOM file", source=name) from None
    except Exception as exc:  # noqa: BLE001 - never let pydicom's text (may quote values) through
        if has_magic:
            raise CorruptImageError(f"not a readable DICOM file ({type(exc).__name__})", source=name) from None
        raise NotAnImageError(_NOT_AN_IMAGE, source=name) from None
    if not has_magic and not present:
        raise NotAnImageError(_NOT_AN_IMAGE, source=name)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        # A bare dataset: its transfer syntax is the encoding pydicom detected.
        from pydicom.dataset import FileMetaDataset

        implicit, little = ds.original_encoding
        if implicit is None:
            implicit, little = True, True
        syntax = (
            dicom_uid.ImplicitVRLittleEndian
            if implicit
            else dicom_uid.ExplicitVRLittleEndian if little else dicom_uid.ExplicitVRBigEndian
        )
        if meta is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _syntax_label(ds: Any) -> tuple[Any, str]:
    from pydicom.uid import UID

    raw = ds.file_meta.get("TransferSyntaxUID")
    syntax = UID(str(raw).strip().rstrip("\x00"))
    if not syntax.is_valid:
        return syntax, "invalid transfer syntax UID"
    name = syntax.name
    return syntax, (name if name == str(syntax) else f"{name} ({syntax})")[:120]


def _check_decoder(ds: Any, name: str) -> None:
    from pydicom.pixels import get_decoder

    syntax, label = _syntax_label(ds)
    try:
        decoder = get_decoder(syntax)
    except Exception:  # noqa: BLE001 - NotImplementedError for unknown / video syntaxes
        raise UnsupportedDicomError(
            f"transfer syntax '{label}' is not supported (no pixel data decoder exists for it)",
            source=name,
        ) from None
    if not decoder.is_available:
        packages = sorted({dep.split(" - ")[0] for dep in decoder.missing_dependencies})
        hint = f" (install a plugin: {', '.join(packages)})" if packages else ""
        raise UnsupportedDicomError(
            f"compressed transfer syntax '{label}' needs a pixel data decoder that is not installed{hint}",
            source=name,
        )


def _bytes_per_pixel(ds: Any) -> int:
    """Bytes one decoded pixel of the first frame takes (BitsAllocated x SamplesPerPixel)."""
    try:
        bits = int(ds.get("BitsAllocated", 16) or 16)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except Exception:  # noqa: BLE001 - unreadable numbers: assume 16-bit greyscale
        bits, samples = 16, 1
    if "FloatPixelData" in ds:
        bits = 32
    elif "DoubleFloatPixelData" in ds:
        bits = 64
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric == "PALETTE COLOR":  # the colour LUT makes 3 x 16-bit samples
        bits, samples = 16, 3
    return max(1, -(-max(bits, 1) // 8)) * min(max(samples, 1), 4)


def read_dicom(data: bytes, name: str, limits: ReadLimits) -> np.ndarray:
    """Decode a DICOM file's bytes (first frame) to an ``HxW`` ``uint8`` array, or raise an ImageReadError."""
    with quiet_pydicom():
        ds = _parse_dicom(data, name, limits)
        if not any(k in ds for k in _PIXEL_KEYWORDS):
            raise UnsupportedDicomError("DICOM file has no pixel data (not an image object)", source=name)
        try:
            rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        except Exception:  # noqa: BLE001
            raise CorruptImageError("DICOM Rows/Columns are not numbers", source=name) from None
        check_size(cols, rows, name, limits, bytes_per_pixel=_bytes_per_pixel(ds))
        _check_decoder(ds, name)
        try:
            ds.pixel_array_options(index=0)  # multi-frame: decode the first frame only
            pixels = ds.pixel_array
        except MemoryError:
            raise ImageTooLargeError("not enough memory to decode the DICOM pixel data", source=name) from None
        except Exception as exc:  # noqa: BLE001 - never let pydicom's text through
            _, label = _syntax_label(ds)
            raise CorruptImageError(
                f"DICOM pixel data ({label}) cannot be decoded ({type(exc).__name__})", source=name
            ) from None
        try:
            return dicom_to_uint8(np.asarray(pixels), ds)
        except Exception as exc:  # noqa: BLE001
            raise CorruptImageError(
                f"DICOM pixel values cannot be converted ({type(exc).__name__})", source=name
            ) from None


def deidentified_dicom_summary(
    source: str | Path | bytes, *, name: str | None = None, limits: ReadLimits | None = None
) -> dict[str, Any]:
    """Technical, non-identifying facts about a DICOM file (for logs and bug reports).

    Only allow-listed pixel-description tags are parsed, so the result can never
    carry a patient, study or institution identifier.
    """
    from pydicom.multival import MultiValue

    limits = limits or ReadLimits()
    data, name = load_bytes(source, name, limits)
    with quiet_pydicom():
        ds = _parse_dicom(data, name, limits)
    _, label = _syntax_label(ds)

    def value(keyword: str) -> Any:
        try:
            v = ds.get(keyword)
        except Exception:  # noqa: BLE001
            return None
        if v is None or v == "":
            return None
        if isinstance(v, MultiValue):
            v = v[0]
        if isinstance(v, (int, float, str)):
            return v if not isinstance(v, str) else str(v)[:32]
        try:
            return float(v)
        except (TypeError, ValueError):
            return str(v)[:32]

    summary: dict[str, Any] = {"source": name, "transfer_syntax": label}
    for keyword in (
        "Modality", "PhotometricInterpretation", "Rows", "Columns", "SamplesPerPixel",
        "NumberOfFrames", "BitsAllocated", "BitsStored", "PixelRepresentation",
        "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction",
    ):
        summary[keyword] = value(keyword)
    summary["has_voi_lut_sequence"] = bool(ds.get("VOILUTSequence"))
    summary["has_pixel_data"] = any(k in ds for k in _PIXEL_KEYWORDS)
    return summary
