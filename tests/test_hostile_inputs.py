"""Issue 11, findings 1-3 (reader side): the decode budget holds before memory is spent.

Every hostile file is made here. Memory is asserted two ways: ``tracemalloc`` for
buffers Python allocates (zlib output), and the peak RSS of a fresh subprocess for
Pillow's own pixel buffers (which tracemalloc cannot see), with generous bounds.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

from cxrdx.data.errors import ImageAspectError
from cxrdx.data.io import ImageTooLargeError, ReadLimits, read_image
from cxrdx.data.pixels import to_uint8

MB = 1024 * 1024


# --------------------------------------------------------------------- builders


def _explicit_le(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _image_elements(rows: int = 64, cols: int = 64) -> Dataset:
    ds = Dataset()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = (np.arange(rows * cols) % 251).astype(np.uint8).tobytes()
    return ds


def deflated_dicom(private_zero_bytes: int = 0) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM (64x64, 8-bit) with an optional zero-filled private OB.

    The deflated stream is built in 1 MiB steps, so even a gigabyte element costs the test no memory.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta)
    first = Dataset()
    first.Modality = "OT"
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [head.getvalue(), deflater.compress(_explicit_le(first))]
    if private_zero_bytes:
        # (0009,1010) OB, explicit VR long form: tag, 'OB', 2 reserved bytes, uint32 length
        parts.append(deflater.compress(b"\x09\x00\x10\x10OB\x00\x00" + private_zero_bytes.to_bytes(4, "little")))
        chunk = bytes(MB)
        for start in range(0, private_zero_bytes, MB):
            parts.append(deflater.compress(chunk[: min(MB, private_zero_bytes - start)]))
    parts.append(deflater.compress(_explicit_le(_image_elements())))
    parts.append(deflater.flush())
    return b"".join(parts)


def _peak_rss_delta_mb(code: str) -> dict:
    """Run ``code`` (which sets ``result``) in a fresh interpreter; its RSS growth in MB and ``result``."""
    script = (
        "import json, resource\n"
        "from cxrdx.data.io import read_image, ReadLimits, ImageReadError\n"
        "import numpy, PIL.Image, pydicom\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"{code}\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'delta_mb': (after - before) / 1024, 'result': result}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


_READ_AND_REPORT = (
    "try:\n"
    "    result = 'read %s' % (read_image(PATH).shape,)\n"
    "except ImageReadError as exc:\n"
    "    result = exc.code\n"
)


# --------------------------------------------------------------------- finding 1: deflated DICOM bomb


def test_small_deflated_dicom_still_reads():
    arr = read_image(deflated_dicom(), name="ok.dcm")
    assert arr.shape == (64, 64) and arr.dtype == np.uint8


def test_deflated_dicom_bomb_is_refused_before_inflating():
    """Finding 1: 256 MB of zeros deflated to ~0.25 MB; the default budget refuses it after <= ~68 MB."""
    bomb = deflated_dicom(private_zero_bytes=256 * MB)
    assert len(bomb) < 2 * MB
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(ImageTooLargeError) as info:
            read_image(bomb, name="bomb.dcm")
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "inflates to more than" in str(info.value)
    assert peak < 40 * MB, f"peak {peak / MB:.0f} MB: the data set was inflated past the budget"
    assert elapsed < 10


def test_deflated_cap_follows_the_limits():
    bomb = deflated_dicom(private_zero_bytes=8 * MB)
    read_image(bomb, name="8mb.dcm")  # within the default budget: the image reads
    with pytest.raises(ImageTooLargeError):
        read_image(bomb, name="8mb.dcm", limits=ReadLimits(max_decoded_bytes=1 * MB))


# --------------------------------------------------------------------- finding 2: bytes per sample


def test_16bit_png_just_under_the_pixel_limit_is_refused_from_its_header(tmp_path):
    """Finding 2: 8000x7999 16-bit (64 M pixels, under max_pixels) took +1.2 GB; now refused, ~no memory."""
    path = tmp_path / "b16.png"
    Image.new("I;16", (8000, 7999)).save(path)
    assert path.stat().st_size < 1 * MB
    report = _peak_rss_delta_mb(f"PATH = {str(path)!r}\n" + _READ_AND_REPORT)
    assert report["result"] == "image_too_large"
    assert report["delta_mb"] < 100, report


def test_decoded_budget_counts_bytes_per_pixel():
    limits = ReadLimits(max_decoded_bytes=100 * 100 * 2 - 1)
    grey8 = io.BytesIO()
    Image.fromarray(np.full((100, 100), 7, np.uint8)).save(grey8, "PNG")
    assert read_image(grey8.getvalue(), limits=limits).shape == (100, 100)  # 1 byte per pixel fits
    grey16 = io.BytesIO()
    Image.fromarray(np.full((100, 100), 700, np.uint16)).save(grey16, "PNG")
    with pytest.raises(ImageTooLargeError, match="byte"):
        read_image(grey16.getvalue(), limits=limits)


def test_large_jpeg_is_downscaled_while_decoding():
    """A JPEG over the budget is decoded with DCT scaling (Image.draft) instead of being refused."""
    rgb = np.dstack([np.tile(np.linspace(0, 255, 1600, dtype=np.uint8), (1200, 1))] * 3)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    full = read_image(buf.getvalue())
    assert full.shape == (1200, 1600)
    small = read_image(buf.getvalue(), limits=ReadLimits(max_decoded_bytes=600_000))
    assert small.shape == (600, 800)  # 1/2 scale: 480,000 bytes of luma
    assert abs(float(small.mean()) - float(full.mean())) < 3
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, "PNG")  # no decode-time scaling for PNG: refused
    with pytest.raises(ImageTooLargeError):
        read_image(png.getvalue(), limits=ReadLimits(max_decoded_bytes=600_000))


def test_dicom_budget_uses_bits_allocated():
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds = _image_elements(200, 200)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = np.full((200, 200), 1000, np.uint16).tobytes()
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert read_image(buf.getvalue(), limits=ReadLimits(max_decoded_bytes=80_000)).shape == (200, 200)
    with pytest.raises(ImageTooLargeError, match="2 byte"):
        read_image(buf.getvalue(), limits=ReadLimits(max_decoded_bytes=79_999))


def test_to_uint8_of_integers_does_not_copy_to_float64():
    arr = np.random.default_rng(0).integers(0, 4096, (2000, 2000)).astype(np.uint16)  # 8 MB
    tracemalloc.start()
    try:
        out = to_uint8(arr)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.dtype == np.uint8 and out.shape == arr.shape and out.max() == 255
    assert peak < 4 * arr.nbytes, f"peak {peak / MB:.0f} MB for an {arr.nbytes / MB:.0f} MB input"


# --------------------------------------------------------------------- finding 3: aspect ratio


def test_tall_strip_is_refused_quickly_without_decoding(tmp_path):
    """Finding 3: a 16x3999999 PNG (66 kB) took 10 s and +3.8 GB; now refused from its header."""
    path = tmp_path / "tall.png"
    Image.new("L", (16, 3_999_999)).save(path)
    t0 = time.perf_counter()
    with pytest.raises(ImageAspectError, match="aspect ratio"):
        read_image(path)
    assert time.perf_counter() - t0 < 1.0
    report = _peak_rss_delta_mb(f"PATH = {str(path)!r}\n" + _READ_AND_REPORT)
    assert report["result"] == "bad_aspect_ratio"
    assert report["delta_mb"] < 50, report


def test_aspect_ratio_limit_is_configurable():
    buf = io.BytesIO()
    Image.new("L", (400, 32)).save(buf, "PNG")
    with pytest.raises(ImageAspectError):
        read_image(buf.getvalue())  # 12.5:1 > 10:1
    assert read_image(buf.getvalue(), limits=ReadLimits(max_aspect_ratio=20)).shape == (32, 400)


def test_limits_from_config():
    from cxrdx.config import DataConfig

    cfg = DataConfig(max_decoded_bytes=123, max_aspect_ratio=4.0)
    limits = ReadLimits.from_config(cfg, max_file_bytes=99)
    assert (limits.max_decoded_bytes, limits.max_aspect_ratio, limits.max_file_bytes) == (123, 4.0, 99)
