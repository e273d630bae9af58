"""Hardened image reading (cxrdx.data.io): every bad input is a typed ImageReadError.

All files are made here, in tmp_path, with Pillow, numpy and pydicom; one test
reads a real cxr3 image and skips when the dataset is absent.
"""

from __future__ import annotations

import io
import logging
import struct
import traceback
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

from cxrdx.config import default_data_root
from cxrdx.data import io as cio
from cxrdx.data.io import (
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
    deidentified_dicom_summary,
    expand_paths,
    iter_images,
    read_image,
)

PATIENT_NAME = "Quixotic^Zebulon^Xavier"
PATIENT_ID = "PID-8675309-XQZ"
PHI = (
    PATIENT_NAME,
    "Quixotic",
    "Zebulon",
    PATIENT_ID,
    "8675309",
    "19010203",  # PatientBirthDate
    "ACC-55501234",  # AccessionNumber
    "Hospital Of St Quirinus",  # InstitutionName
    "Dr^Phyllis^Vantablack",  # ReferringPhysicianName
)


# --------------------------------------------------------------------- builders


def gradient(h: int = 64, w: int = 80, top: int = 255, dtype=np.uint8) -> np.ndarray:
    """A deterministic image with structure in both axes (0..top)."""
    y, x = np.mgrid[0:h, 0:w]
    arr = (x / (w - 1) * 0.7 + y / (h - 1) * 0.3) * top
    return np.round(arr).astype(dtype)


def encode(img: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def png_bytes(arr: np.ndarray) -> bytes:
    return encode(Image.fromarray(arr))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def make_dicom(
    arr: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    syntax: str = uid.ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    with_pixels: bool = True,
    preamble: bool = True,
    **elements,
) -> bytes:
    """A DX dataset carrying distinctive (fake) patient identifiers."""
    arr = gradient(64, 80, 4000, np.uint16) if arr is None else arr
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19010203"
    ds.AccessionNumber = "ACC-55501234"
    ds.InstitutionName = "Hospital Of St Quirinus"
    ds.ReferringPhysicianName = "Dr^Phyllis^Vantablack"
    ds.Modality = "DX"
    frames = arr.shape[0] if arr.ndim == 3 else 1
    ds.Rows, ds.Columns = arr.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if with_pixels:
        if pixel_data is not None:
            ds.PixelData = pixel_data
        elif uid.UID(syntax).is_encapsulated:
            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 definitely not a codestream " * 8])
        else:
            ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def expect_error(cls, source, **kw) -> ImageReadError:
    with pytest.raises(cls) as info:
        read_image(source, **kw)
    exc = info.value
    assert isinstance(exc, ImageReadError)
    assert exc.code and isinstance(exc.http_status, int)
    # no third-party exception (whose text might quote DICOM values) rides along
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    return exc


# --------------------------------------------------------------------- basics


def test_png_from_path_and_bytes(tmp_path):
    arr = gradient()
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(arr))
    from_path = read_image(path)
    from_bytes = read_image(path.read_bytes())
    assert from_path.dtype == np.uint8 and from_path.shape == arr.shape
    np.testing.assert_array_equal(from_path, arr)
    np.testing.assert_array_equal(from_bytes, arr)


def test_error_classes_have_code_and_http_status():
    classes = [ImageReadError, *ImageReadError.__subclasses__()]
    for cls in list(classes):
        classes.extend(cls.__subclasses__())
    codes = set()
    for cls in set(classes):
        assert isinstance(cls.code, str) and cls.code
        assert 400 <= cls.http_status < 500
        codes.add(cls.code)
    assert len(codes) == len(set(classes))
    assert issubclass(ImageTooSmallError, CorruptImageError)
    assert issubclass(MissingFileError, FileAccessError)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    exc = expect_error(EmptyFileError, path)
    assert "empty.png" in str(exc) and "0 bytes" in str(exc)
    expect_error(EmptyFileError, b"", name="upload.jpg")


def test_missing_file_and_folder(tmp_path):
    expect_error(MissingFileError, tmp_path / "nope.png")
    expect_error(NotAnImageError, tmp_path)


def test_max_file_bytes(tmp_path):
    data = png_bytes(gradient())
    expect_error(ImageTooLargeError, data, limits=ReadLimits(max_file_bytes=100))
    path = tmp_path / "big.png"
    path.write_bytes(data)
    exc = expect_error(ImageTooLargeError, path, limits=ReadLimits(max_file_bytes=100))
    assert exc.http_status == 413


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_raster(fmt):
    rng = np.random.default_rng(0)  # noise does not compress: the cut lands in the pixel data
    data = encode(Image.fromarray(rng.integers(0, 256, (128, 128), dtype=np.uint8)), fmt)
    exc = expect_error(CorruptImageError, data[: len(data) // 2], name=f"half.{fmt.lower()}")
    assert "truncated or corrupt" in str(exc)


def test_corrupt_png_data():
    data = bytearray(png_bytes(gradient(64, 64)))
    start = data.index(b"IDAT") + 4
    data[start : start + 40] = b"\x00" * 40  # broken zlib stream (the CRC is now wrong too)
    expect_error(CorruptImageError, bytes(data))


def test_tiny_image_is_too_small():
    exc = expect_error(ImageTooSmallError, png_bytes(np.zeros((8, 8), np.uint8)))
    assert isinstance(exc, CorruptImageError) and "8x8" in str(exc)


@pytest.mark.parametrize(
    "name,data",
    [
        ("report.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"),
        ("notes.txt", b"chest x-ray, PA view, no findings\n" * 20),
        ("noise.bin", np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        ("fake.png", b"this is not a png at all" * 10),
        ("fake.dcm", b"neither is this a DICOM file" * 10),
        ("drawing.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n"),
    ],
)
def test_not_an_image(name, data, tmp_path):
    exc = expect_error(NotAnImageError, data, name=name)
    assert exc.http_status == 415 and name in str(exc)
    path = tmp_path / name
    path.write_bytes(data)
    expect_error(NotAnImageError, path)


# ------------------------------------------------------------ decompression bomb


def test_bomb_guard_uses_max_pixels():
    data = png_bytes(gradient(200, 200))  # 40 000 pixels
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not leak either
        # > 2x the limit: Pillow's DecompressionBombError
        exc = expect_error(ImageTooLargeError, data, limits=ReadLimits(max_pixels=10_000))
        assert "10000" in str(exc) and exc.http_status == 413
        # between 1x and 2x: Pillow only warns, we still refuse
        expect_error(ImageTooLargeError, data, limits=ReadLimits(max_pixels=30_000))
        assert read_image(data, limits=ReadLimits(max_pixels=40_000)).shape == (200, 200)
    assert Image.MAX_IMAGE_PIXELS == before  # the global is restored


def test_png_header_claiming_huge_dimensions():
    expect_error(ImageTooLargeError, png_claiming(100_000, 100_000))
    expect_error(ImageTooLargeError, png_claiming(9_000, 9_000))  # 81 Mpx > default 64 Mpx
    # plausible size but no data behind it: corrupt, not a crash
    expect_error(CorruptImageError, png_claiming(2_000, 2_000))


def test_concurrent_reads_with_different_limits():
    data = png_bytes(gradient(200, 200))
    before = Image.MAX_IMAGE_PIXELS

    def one(i: int) -> str:
        limit = 10_000 if i % 2 else 100_000
        try:
            read_image(data, limits=ReadLimits(max_pixels=limit))
            return "ok"
        except ImageTooLargeError:
            return "big"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(64)))
    assert results == ["big" if i % 2 else "ok" for i in range(64)]
    assert Image.MAX_IMAGE_PIXELS == before


# ----------------------------------------------------------------- pixel modes


def test_16bit_png_is_windowed_to_8bit():
    arr16 = gradient(64, 80, 4095, np.uint16)  # 12-bit data in a 16-bit PNG
    img = Image.fromarray(arr16)
    assert img.mode == "I;16"
    out = read_image(encode(img))
    assert out.dtype == np.uint8 and out.shape == arr16.shape
    assert out.min() == 0 and out.max() == 255  # windowed, not just >> 8 (would max at 15)
    assert np.corrcoef(out.ravel(), arr16.ravel())[0, 1] > 0.99


def test_rgba_is_composited_on_black():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :16, 3] = 255  # left half opaque grey, right half fully transparent
    out = read_image(encode(Image.fromarray(rgba, "RGBA")))
    assert out.shape == (32, 32)
    assert (out[:, :16] == 200).all() and (out[:, 16:] == 0).all()


def test_la_is_composited_on_black():
    la = np.zeros((32, 32, 2), np.uint8)
    la[..., 0] = 180
    la[..., 1] = 128  # half transparent
    out = read_image(encode(Image.fromarray(la, "LA")))
    assert out.shape == (32, 32) and np.abs(out.astype(int) - 90).max() <= 1


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_png(transparent):
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 0, 255, 255, 255, 100, 100, 100] + [0] * (256 * 3 - 9))
    px = np.zeros((32, 32), np.uint8)
    px[:, 8:16] = 1
    px[:, 16:] = 2
    img.putdata(px.ravel().tolist())
    params = {"transparency": 1} if transparent else {}
    data = encode(img, **params)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = read_image(data)
    assert out.shape == (32, 32)
    assert (out[:, :8] == 0).all() and (out[:, 16:] == 100).all()
    assert (out[:, 8:16] == (0 if transparent else 255)).all()  # transparent white -> black


def test_cmyk_jpeg():
    rgb = np.stack([gradient(64, 64)] * 3, axis=-1)
    cmyk = Image.fromarray(rgb, "RGB").convert("CMYK")
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = read_image(data)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - gradient(64, 64)).mean() < 6


def test_exif_rotated_jpeg():
    arr = np.zeros((32, 64), np.uint8)  # wide; a bright block on the left
    arr[:, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    data = encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())
    out = read_image(data)
    assert out.shape == (64, 32)  # displayed portrait
    assert out[:16].mean() > 200 and out[-16:].mean() < 50  # left block is now on top


def test_rgb_is_luma():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 1] = 200
    out = read_image(encode(Image.fromarray(rgb, "RGB")))
    assert np.abs(out.astype(int) - round(0.587 * 200)).max() <= 1


# ----------------------------------------------------------------------- DICOM


@pytest.mark.parametrize("dtype,top", [(np.uint16, 4000), (np.uint8, 255)])
def test_dicom_16bit_and_8bit(dtype, top, tmp_path):
    arr = gradient(64, 80, top, dtype)
    path = tmp_path / "image.dcm"
    path.write_bytes(make_dicom(arr))
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (64, 80)
    assert out.min() == 0 and out.max() == 255
    assert np.corrcoef(out.ravel(), arr.ravel())[0, 1] > 0.99
    if dtype == np.uint8:
        np.testing.assert_array_equal(out, arr)  # 8-bit display values pass through


def test_dicom_signed_16bit():
    arr = (gradient(64, 80, 3000, np.int32) - 1500).astype(np.int16)
    out = read_image(make_dicom(arr))
    assert out.min() == 0 and out.max() == 255
    assert np.corrcoef(out.ravel(), arr.ravel())[0, 1] > 0.99


def test_dicom_monochrome1_is_inverted():
    arr = gradient(64, 80, 4000, np.uint16)
    mono2 = read_image(make_dicom(arr, photometric="MONOCHROME2"))
    mono1 = read_image(make_dicom(arr, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(mono1, 255 - mono2)
    # the same picture stored the MONOCHROME1 way (0 = white) reads the same
    stored_inverted = read_image(make_dicom((4000 - arr).astype(np.uint16), photometric="MONOCHROME1"))
    assert np.abs(stored_inverted.astype(int) - mono2.astype(int)).max() <= 1


def test_dicom_monochrome1_8bit_and_windowed():
    arr = gradient(32, 32, 255, np.uint8)
    np.testing.assert_array_equal(read_image(make_dicom(arr, photometric="MONOCHROME1")), 255 - arr)
    arr16 = gradient(64, 80, 4000, np.uint16)
    window = dict(WindowCenter=2000, WindowWidth=1000)
    m1 = read_image(make_dicom(arr16, photometric="MONOCHROME1", **window))
    m2 = read_image(make_dicom(arr16, photometric="MONOCHROME2", **window))
    np.testing.assert_array_equal(m1, 255 - m2)


def expected_linear_window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    x = x.astype(np.float64)
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0, np.where(x > c - 0.5 + (w - 1) / 2, 255, y))
    return np.round(y)


def test_dicom_window_center_width_applied():
    arr = gradient(64, 80, 4000, np.uint16)
    out = read_image(make_dicom(arr, WindowCenter=1000, WindowWidth=500))
    np.testing.assert_allclose(out, expected_linear_window(arr, 1000, 500), atol=1)
    assert (out[arr <= 749] == 0).all() and (out[arr >= 1250] == 255).all()
    # multi-valued window: the first one is used
    multi = read_image(make_dicom(arr, WindowCenter=[1000, 3000], WindowWidth=[500, 100]))
    np.testing.assert_array_equal(multi, out)


def test_dicom_window_sigmoid_and_linear_exact():
    arr = gradient(64, 80, 4000, np.uint16)
    exact = read_image(make_dicom(arr, WindowCenter=2000, WindowWidth=1000, VOILUTFunction="LINEAR_EXACT"))
    expected = np.clip(((arr - 2000.0) / 1000 + 0.5) * 255, 0, 255)
    np.testing.assert_allclose(exact, np.round(expected), atol=1)
    sigmoid = read_image(make_dicom(arr, WindowCenter=2000, WindowWidth=1000, VOILUTFunction="SIGMOID"))
    np.testing.assert_allclose(sigmoid, np.round(255 / (1 + np.exp(-4 * (arr - 2000.0) / 1000))), atol=1)


def test_dicom_rescale_slope_intercept_applied():
    arr = gradient(64, 80, 4000, np.uint16)
    # window given in modality units (e.g. HU): it only lands right if the rescale is applied
    out = read_image(make_dicom(arr, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=400))
    np.testing.assert_allclose(out, expected_linear_window(arr.astype(np.float64) - 1024, 0, 400), atol=1)
    assert (out[arr <= 800] == 0).all() and (out[arr >= 1250] == 255).all()
    slope2 = read_image(make_dicom(arr, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=500))
    np.testing.assert_allclose(slope2, expected_linear_window(2.0 * arr - 1000, 1000, 500), atol=1)
    # a negative slope flips the grey scale even without a window
    plain = read_image(make_dicom(arr))
    flipped = read_image(make_dicom(arr, RescaleSlope=-1, RescaleIntercept=0))
    assert np.abs(flipped.astype(int) - (255 - plain.astype(int))).max() <= 1


def test_dicom_broken_window_falls_back():
    arr = gradient(64, 80, 4000, np.uint16)
    out = read_image(make_dicom(arr, WindowCenter=1000, WindowWidth=0))
    np.testing.assert_array_equal(out, read_image(make_dicom(arr)))


def test_dicom_multiframe_first_frame():
    frames = np.stack([gradient(32, 32, 4000, np.uint16), np.full((32, 32), 7, np.uint16)])
    out = read_image(make_dicom(frames))
    np.testing.assert_array_equal(out, read_image(make_dicom(frames[0])))


def test_dicom_without_preamble_or_suffix(tmp_path):
    arr = gradient(64, 80, 4000, np.uint16)
    bare = make_dicom(arr, preamble=False)
    assert bare[128:132] != b"DICM"
    expected = read_image(make_dicom(arr))
    path = tmp_path / "bare.dcm"
    path.write_bytes(bare)
    np.testing.assert_array_equal(read_image(path), expected)
    np.testing.assert_array_equal(read_image(bare, name="upload"), expected)  # sniffed, no suffix


def test_png_named_dcm_is_read_as_png():
    arr = gradient()
    np.testing.assert_array_equal(read_image(png_bytes(arr), name="mislabelled.dcm"), arr)


def test_dicom_no_pixel_data():
    exc = expect_error(UnsupportedDicomError, make_dicom(with_pixels=False), name="nopix.dcm")
    assert "no pixel data" in str(exc)


def _syntax_without_decoder() -> str:
    """A compressed transfer syntax pydicom knows but can't decode here (which one depends on the plugins installed)."""
    from pydicom.pixels import get_decoder

    for syntax in (uid.HTJ2KLossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless):
        if not get_decoder(syntax).is_available:
            return syntax
    raise AssertionError("every candidate syntax has a decoder installed: pick another")


NO_DECODER = _syntax_without_decoder()


def test_dicom_compressed_syntax_without_decoder():
    exc = expect_error(UnsupportedDicomError, make_dicom(syntax=NO_DECODER), name="nodecoder.dcm")
    assert NO_DECODER in str(exc) and "not installed" in str(exc)


def test_dicom_jpeg2000_junk_is_typed():
    from pydicom.pixels import get_decoder

    data = make_dicom(syntax=uid.JPEG2000Lossless)
    if get_decoder(uid.JPEG2000Lossless).is_available:  # Pillow with OpenJPEG can try, and fails
        exc = expect_error(CorruptImageError, data, name="j2k.dcm")
    else:
        exc = expect_error(UnsupportedDicomError, data, name="j2k.dcm")
    assert "JPEG 2000" in str(exc)


def test_dicom_unknown_syntax():
    exc = expect_error(UnsupportedDicomError, make_dicom(syntax=uid.MPEG2MPML), name="video.dcm")
    assert "MPEG2" in str(exc)


def test_dicom_truncated_and_bad_length():
    data = make_dicom()
    expect_error(CorruptImageError, data[: len(data) // 2], name="half.dcm")
    short = make_dicom(pixel_data=b"\x00\x01" * 100)
    expect_error(CorruptImageError, short, name="short.dcm")


def test_dicom_too_large_and_too_small():
    expect_error(ImageTooLargeError, make_dicom(), limits=ReadLimits(max_pixels=1000))
    expect_error(ImageTooSmallError, make_dicom(np.zeros((8, 8), np.uint16)))


def dicom_failure_cases() -> list[tuple[str, bytes, ReadLimits]]:
    full = make_dicom()
    default = ReadLimits()
    return [
        ("nopixels", make_dicom(with_pixels=False), default),
        ("jpegls", make_dicom(syntax=uid.JPEGLSLossless), default),
        ("jpeg2000", make_dicom(syntax=uid.JPEG2000Lossless), default),
        ("jpeg", make_dicom(syntax=uid.JPEGBaseline8Bit, arr=gradient(32, 32)), default),
        ("rle", make_dicom(syntax=uid.RLELossless), default),
        ("mpeg2", make_dicom(syntax=uid.MPEG2MPML), default),
        ("half", full[: len(full) // 2], default),
        ("meta-only", full[:400], default),
        ("short-pixels", make_dicom(pixel_data=b"\x01" * 99), default),
        ("too-large", full, ReadLimits(max_pixels=100)),
        ("too-small", make_dicom(np.zeros((4, 4), np.uint16)), default),
        ("bad-rows", make_dicom(Rows=0), default),
    ]


def test_dicom_patient_identifiers_never_leak(tmp_path, caplog, recwarn):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pydicom")
    texts: list[str] = []
    for label, data, limits in dicom_failure_cases():
        assert PATIENT_NAME.encode() in data or label in ("half", "meta-only")
        path = tmp_path / f"{label}.dcm"
        path.write_bytes(data)
        for source in (path, data):
            with pytest.raises(ImageReadError) as info:
                read_image(source, limits=limits)
            exc = info.value
            texts += [str(exc), repr(exc), exc.message, "".join(traceback.format_exception(exc))]
    # a good file, its summary and a batch over all of them log nothing identifying either
    good = tmp_path / "good.dcm"
    good.write_bytes(make_dicom())
    assert read_image(good).shape == (64, 80)
    texts.append(repr(deidentified_dicom_summary(good)))
    texts += [f"{p.name}: {r}" for p, r in iter_images([tmp_path])]
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    texts += [str(w.message) for w in recwarn]
    blob = "\n".join(texts)
    assert "nopixels.dcm" in blob  # the file is still named
    for secret in PHI:
        assert secret not in blob, secret
        assert secret.replace("^", " ") not in blob, secret


def test_deidentified_dicom_summary():
    summary = deidentified_dicom_summary(make_dicom(WindowCenter=1000, WindowWidth=500), name="s.dcm")
    assert summary["Rows"] == 64 and summary["Columns"] == 80
    assert summary["PhotometricInterpretation"] == "MONOCHROME2"
    assert summary["WindowCenter"] == 1000 and summary["has_pixel_data"] is True
    assert "Explicit VR Little Endian" in summary["transfer_syntax"]
    assert not any(key.lower().startswith(("patient", "institution", "accession")) for key in summary)
    with pytest.raises(NotAnImageError):
        deidentified_dicom_summary(b"hello world" * 20, name="x.dcm")


# ----------------------------------------------------------------- batches


def test_iter_images_mixed_folder(tmp_path):
    good = gradient()
    (tmp_path / "sub").mkdir()
    files = {
        "a_good.png": png_bytes(good),
        "b_empty.png": b"",
        "c_half.jpg": encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), np.uint8)), "JPEG")[:900],
        "d_text.png": b"hello, not an image\n" * 10,
        "e_good.dcm": make_dicom(),
        "f_nopixels.dcm": make_dicom(with_pixels=False),
        "g_bomb.png": png_claiming(100_000, 100_000),
        "h_jpegls.dcm": make_dicom(syntax=NO_DECODER),
        "readme.txt": b"skipped: not an image suffix",
        "sub/i_good.jpg": encode(Image.fromarray(good), "JPEG", quality=95),
    }
    for rel, data in files.items():
        (tmp_path / rel).write_bytes(data)
    missing = tmp_path / "zz_missing.png"
    results = list(iter_images([tmp_path, missing]))
    names = [p.name for p, _ in results]
    assert names == [Path(rel).name for rel in files if not rel.endswith(".txt")] + ["zz_missing.png"]
    kinds = [type(r) for _, r in results]
    assert kinds == [
        np.ndarray, EmptyFileError, CorruptImageError, NotAnImageError, np.ndarray,
        UnsupportedDicomError, ImageTooLargeError, UnsupportedDicomError, np.ndarray, MissingFileError,
    ]
    for _, r in results:
        if isinstance(r, np.ndarray):
            assert r.ndim == 2 and r.dtype == np.uint8
    assert expand_paths([tmp_path]) == [p for p, _ in results[:-1]]


def test_unexpected_failure_is_still_typed(monkeypatch):
    def boom(*_a, **_k):
        raise KeyError("internal bug")

    monkeypatch.setattr(cio, "_looks_like_dicom", boom)
    exc = expect_error(CorruptImageError, png_bytes(gradient()), name="x.png")
    assert "KeyError" in str(exc)


# ----------------------------------------------------------------- real data


def test_reads_a_real_cxr3_image(cxr3_root):
    folder = cxr3_root / "images" / "covid"
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    assert files, f"no covid images under {folder}"
    out = read_image(files[0])
    assert out.ndim == 2 and out.dtype == np.uint8
    assert min(out.shape) == 256
    assert out.std() > 5  # a picture, not a blank
