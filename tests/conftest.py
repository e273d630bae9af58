"""Shared fixtures: the real data sets and a session-wide feature cache.

Tests that need something this machine may lack (a data set, Chromium, PostgreSQL, Orthanc) call
:func:`require`: it skips on a developer's machine but FAILS under ``CI=true``, so a CI run without its
data or services can never go green by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cxrdx.config import default_data_root

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str) -> None:
    """Skip locally, fail in CI, when ``what`` is not available."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing, and CI=true: CI must provide it", pytrace=False)
    pytest.skip(f"{what} not available")


def shared_dataset(name: str) -> Path:
    """``../shared/data/<name>`` beside the checkout (or beside $CXRDX_DATA), required to exist."""
    root = default_data_root().parent / name
    require((root / "metadata.csv").is_file(), f"data set {name} ({root}; set CXRDX_DATA to .../data/cxr3)")
    return root


@pytest.fixture(scope="session")
def cxr3_root() -> Path:
    root = default_data_root()
    require((root / "metadata.csv").is_file(), f"cxr3 data ({root}; set CXRDX_DATA)")
    return root


@pytest.fixture(scope="session")
def lungseg_root() -> Path:
    return shared_dataset("lungseg")


@pytest.fixture(scope="session")
def ct2_root() -> Path:
    return shared_dataset("ct2")


@pytest.fixture(scope="session")
def feature_cache_dir(tmp_path_factory) -> Path:
    """One feature cache for the whole test session ($CXRDX_TEST_CACHE to keep it between runs)."""
    env = os.environ.get("CXRDX_TEST_CACHE")
    if env:
        Path(env).mkdir(parents=True, exist_ok=True)
        return Path(env)
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="session")
def cxr3_slice(cxr3_root):
    """A small class-balanced slice of cxr3 (whole patients), for quick real training runs."""
    from cxrdx.data.manifest import load_manifest

    df = load_manifest(cxr3_root)
    rng = np.random.default_rng(0)
    parts = []
    for label in ("covid", "pneumonia", "normal"):
        patients = df.loc[df["label"] == label, "patient_id"].unique()
        chosen = set(rng.choice(patients, size=min(60, len(patients)), replace=False))
        parts.append(df[df["patient_id"].isin(chosen) & (df["label"] == label)])
    import pandas as pd

    return pd.concat(parts).drop_duplicates("image").reset_index(drop=True)


def make_xray(size: tuple[int, int] = (256, 300), seed: int = 0) -> np.ndarray:
    """A synthetic chest-X-ray-like uint8 image: two dark lung fields in a brighter body."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w), 180.0)
    for cx in (0.3 * w, 0.7 * w):
        img -= 110 * np.exp(-(((xx - cx) / (0.14 * w)) ** 2 + ((yy - 0.5 * h) / (0.3 * h)) ** 2))
    img += rng.normal(0, 8, size=(h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def dicom_bytes(arr: np.ndarray | None = None, patient_name: str = "Doe^Jane") -> bytes:
    """A 16-bit MONOCHROME2 DICOM file of a synthetic X-ray (with a patient name that must never leak)."""
    import io

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    arr = make_xray() if arr is None else arr
    pixels = (arr.astype(np.uint16) * 16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = patient_name, "PID-0042", "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
