"""Hardened image reading: one code path for the CLI, the Python API and the server.

:func:`read_image` turns a PNG / JPEG / DICOM (a path or raw bytes) into an 8-bit
greyscale ``numpy`` array, or raises a subclass of :class:`ImageReadError` whose
``code``, ``http_status`` and message say what is wrong. Nothing else escapes it:
a corrupt, truncated, empty, oversized or foreign file is always a typed error, so
one bad file never stops a batch (:func:`iter_images`).

Privacy: no DICOM patient identifier ever enters a message or a log line. DICOM
files are parsed with an allow-list of technical tags (:data:`DICOM_TAGS`), so
patient / study elements are never even decoded; errors name the file only by the
name the caller gave and describe failures by exception *type*, never by the
text of a third-party exception.

Conversions:

* 16-bit / 32-bit / float rasters are windowed to 8 bit (0.5-99.5 percentile).
* RGBA, LA, PA and palette images with transparency are composited on black.
* Colour (RGB, CMYK, YCbCr, palette ...) becomes luma; EXIF orientation is applied.
* DICOM: the modality LUT (Rescale Slope / Intercept, or a Modality LUT Sequence),
  then the VOI LUT Sequence or Window Center / Width (LINEAR, LINEAR_EXACT,
  SIGMOID) are applied; without a VOI transform, data over 8 bit are percentile
  windowed; MONOCHROME1 is inverted so that bone is always bright; multi-frame
  files give their first frame.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
MIN_SIDE = 16
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = (".dcm", ".dicom")

# Pillow decoders we let near untrusted bytes (JPEG includes MPO). Everything else
# (EPS, which runs Ghostscript; PSD; ICNS ...) is refused as "not an image".
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")

_RASTER_MAGIC = (
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"\xff\xd8\xff",  # JPEG
    b"BM",  # BMP
    b"II*\x00",  # TIFF little endian
    b"MM\x00*",  # TIFF big endian
    b"GIF8",  # GIF
)

# The only DICOM elements ever parsed: pixel description, LUTs and pixel data.
DICOM_TAGS = (
    "Modality",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelData",
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Image.MAX_IMAGE_PIXELS is process-global: set it per call only under this lock.
_PIL_LOCK = threading.Lock()

# pydicom logs a full traceback (logger.exception) for every frame that a decoding
# plugin fails on; we turn that failure into one typed error, so its own log
# records are dropped while *this thread* is inside a read_image DICOM call.
_PYDICOM_LOGGERS = ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils")
_LOCAL = threading.local()


class _QuietInThisThread(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_LOCAL, "quiet", 0)


_QUIET_FILTER = _QuietInThisThread()


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    for logger_name in _PYDICOM_LOGGERS:
        logging.getLogger(logger_name).addFilter(_QUIET_FILTER)  # idempotent
    _LOCAL.quiet = getattr(_LOCAL, "quiet", 0) + 1
    try:
        yield
    finally:
        _LOCAL.quiet -= 1


# --------------------------------------------------------------------------- errors


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


class ImageTooLargeError(ImageReadError):
    code = "image_too_large"
    http_status = 413


class UnsupportedDicomError(ImageReadError):
    code = "unsupported_dicom"


@dataclass(frozen=True)
class ReadLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images with more pixels (width x height) are refused: decompression-bomb guard."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES


# ---------------------------------------------------------------------- helpers


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Window any numeric array to 0..255 between its 0.5 and 99.5 percentiles."""
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
    out = (np.clip(arr, lo, hi) - lo) / (hi - lo) * 255.0
    return np.round(out).astype(np.uint8)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an ``HxWx3`` array, as float."""
    rgb = np.asarray(rgb, dtype=np.float64)[..., :3]
    return rgb @ np.array([0.299, 0.587, 0.114])


def _check_size(w: int, h: int, name: str, limits: ReadLimits) -> None:
    if w * h > limits.max_pixels:
        raise ImageTooLargeError(
            f"{w}x{h} pixels exceeds the limit of {limits.max_pixels} pixels", source=name
        )
    if w < MIN_SIDE or h < MIN_SIDE:
        raise ImageTooSmallError(f"{w}x{h} pixels is too small for a chest X-ray", source=name)


def _short(exc: BaseException, limit: int = 120) -> str:
    """A third-party exception's text, cut short (rasters only, never DICOM)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text[:limit]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------- raster


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


def _read_raster(data: bytes, name: str, limits: ReadLimits) -> np.ndarray:
    img = _open_raster(data, name, limits)
    w, h = img.size
    _check_size(w, h, name, limits)
    try:
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return _pil_to_grey(img)
    except MemoryError:
        raise ImageTooLargeError("not enough memory to decode the image", source=name) from None
    except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, ValueError, zlib.error ...
        raise CorruptImageError(f"truncated or corrupt image data ({_short(exc)})", source=name) from None


def _pil_to_grey(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I") or mode == "F":  # I, I;16, I;16B, I;16L, I;16N, I;16S ...
        return _to_uint8(np.asarray(img))
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


# ------------------------------------------------------------------------ DICOM


def _looks_like_dicom(data: bytes, name: str) -> bool:
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if data.startswith(_RASTER_MAGIC) or data[:4] == b"RIFF":
        return False
    # A bare dataset without preamble starts with group 0x0002 or 0x0008.
    return name.lower().endswith(DICOM_SUFFIXES) or data[:2] in (b"\x02\x00", b"\x08\x00")


def _parse_dicom(data: bytes, name: str) -> Any:
    """Parse only :data:`DICOM_TAGS` (+ file meta); typed errors without any DICOM text."""
    import pydicom
    from pydicom import uid as dicom_uid

    has_magic = len(data) >= 132 and data[128:132] == b"DICM"
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
        raise NotAnImageError("not a PNG, JPEG or DICOM image", source=name) from None
    if not has_magic and not present:
        raise NotAnImageError("not a PNG, JPEG or DICOM image", source=name)
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


def _first_number(value: Any) -> float:
    from pydicom.multival import MultiValue

    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0]
    return float(value)


def _apply_window(arr: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
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
            return np.round(_apply_window(arr, center, width, function)).astype(np.uint8)
        except Exception as exc:  # noqa: BLE001 - broken window: fall back
            logger.debug("ignoring an unusable Window Center/Width (%s)", type(exc).__name__)
    arr = np.asarray(arr)
    if stored_8bit and arr.size and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 255:
        return np.asarray(arr, dtype=np.uint8)  # already 8-bit display values
    return _to_uint8(arr)


def _read_dicom(data: bytes, name: str, limits: ReadLimits) -> np.ndarray:
    ds = _parse_dicom(data, name)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise UnsupportedDicomError("DICOM file has no pixel data (not an image object)", source=name)
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception:  # noqa: BLE001
        raise CorruptImageError("DICOM Rows/Columns are not numbers", source=name) from None
    _check_size(cols, rows, name, limits)
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
        return _dicom_to_uint8(np.asarray(pixels), ds)
    except Exception as exc:  # noqa: BLE001
        raise CorruptImageError(
            f"DICOM pixel values cannot be converted ({type(exc).__name__})", source=name
        ) from None


def _dicom_to_uint8(pixels: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 3:  # colour: RGB (pydicom converts YBR to RGB), no LUTs apply
        bits = int(ds.get("BitsStored", 8) or 8)
        if photometric == "PALETTE COLOR" or bits > 8:
            return _to_uint8(_luma(pixels))
        return np.round(np.clip(_luma(pixels), 0, 255)).astype(np.uint8)
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


def deidentified_dicom_summary(
    source: str | Path | bytes, *, name: str | None = None, limits: ReadLimits | None = None
) -> dict[str, Any]:
    """Technical, non-identifying facts about a DICOM file (for logs and bug reports).

    Only allow-listed pixel-description tags are parsed, so the result can never
    carry a patient, study or institution identifier.
    """
    from pydicom.multival import MultiValue

    limits = limits or ReadLimits()
    data, name = _load_bytes(source, name, limits)
    with _quiet_pydicom():
        ds = _parse_dicom(data, name)
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


# ---------------------------------------------------------------------- public


def _load_bytes(source: str | Path | bytes, name: str | None, limits: ReadLimits) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "upload"
    else:
        path = Path(source)
        name = name or path.name or str(path)
        try:
            if not path.exists():
                raise MissingFileError("file does not exist", source=name)
            if path.is_dir():
                raise NotAnImageError("is a folder, not an image", source=name)
            if not path.is_file():
                raise FileAccessError("is not a regular file", source=name)
            size = path.stat().st_size
            if size > limits.max_file_bytes:
                raise ImageTooLargeError(f"file of {size} bytes exceeds {limits.max_file_bytes}", source=name)
            with path.open("rb") as fh:
                data = fh.read(limits.max_file_bytes + 1)
        except ImageReadError:
            raise
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise FileAccessError(f"file cannot be read ({reason})", source=name) from None
    if len(data) == 0:
        raise EmptyFileError("file is empty (0 bytes)", source=name)
    if len(data) > limits.max_file_bytes:
        raise ImageTooLargeError(f"file of {len(data)} bytes exceeds {limits.max_file_bytes}", source=name)
    return data, name


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
        data, label = _load_bytes(source, name, limits)
        if _looks_like_dicom(data, label):
            with _quiet_pydicom():
                return _read_dicom(data, label, limits)
        return _read_raster(data, label, limits)
    except ImageReadError as exc:
        logger.debug("cannot read %s: %s", label, exc.code)
        raise
    except MemoryError:
        logger.debug("cannot read %s: out of memory", label)
        raise ImageTooLargeError("not enough memory to read the image", source=label) from None
    except Exception as exc:  # noqa: BLE001 - last line of defence: one bad file never stops a batch
        logger.debug("cannot read %s: unexpected %s", label, type(exc).__name__)
        raise CorruptImageError(f"unreadable image ({type(exc).__name__})", source=label) from None


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
