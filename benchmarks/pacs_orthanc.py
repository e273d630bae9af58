"""A throwaway Orthanc on loopback (temporary config + storage) and test DICOMs from cxr3 images.

Used by ``tests/test_pacs.py`` and ``benchmarks/pacs_throughput.py`` (not part of the package). Needs the
``Orthanc`` binary (Debian: ``apt-get install orthanc``); starts it with no plugins, remote access off and
no authentication, on free loopback ports, and stops it (same storage can be started again).
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).exists()), None)


class OrthancServer:
    """``Orthanc CONFIG.json`` in a subprocess; ``start()`` / ``stop()`` may be repeated (storage is kept)."""

    def __init__(self, root: Path, *, http_port: int | None = None, dicom_port: int | None = None):
        binary = orthanc_binary()
        if binary is None:
            raise FileNotFoundError("the Orthanc binary is not installed (Debian: apt-get install orthanc)")
        self.binary, self.root = binary, Path(root)
        self.http_port, self.dicom_port = http_port or free_port(), dicom_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen | None = None
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.config = self.root / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "cxrdx-test", "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "CXRDXTEST",
            "StorageDirectory": str(storage), "IndexDirectory": str(storage), "Plugins": [], "LuaScripts": [],
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
            "DicomServerEnabled": True, "HttpsVerifyPeers": False, "ConcurrentJobs": 1, "HttpThreadsCount": 8,
            "StableAge": 1, "SaveJobs": False, "OverwriteInstances": False, "StorageCompression": False,
        }, indent=2))

    def start(self, timeout: float = 30.0) -> "OrthancServer":
        log = open(self.root / "orthanc.log", "ab")
        self.proc = subprocess.Popen([self.binary, "--logdir=" + str(self.root), str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {self.root / 'orthanc.log'}")
            try:
                if httpx.get(self.url + "/system", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def upload(self, data: bytes) -> dict:
        r = httpx.post(self.url + "/instances", content=data, headers={"Content-Type": "application/dicom"}, timeout=30)
        r.raise_for_status()
        return r.json()

    def get(self, path: str):
        r = httpx.get(self.url + path, timeout=30)
        r.raise_for_status()
        return r.json()

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def chest_dicom(grey: np.ndarray, *, study_uid: str | None = None, modality: str = "CR", body_part: str = "CHEST",
                patient_name: str = "Doe^Jane", patient_id: str = "PID-0042", instance_number: int = 1,
                series_uid: str | None = None, pixels: bool = True) -> bytes:
    """A CR/DX Image Storage file (16-bit MONOCHROME2) of ``grey`` with full patient / study / series attributes."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                             ExplicitVRLittleEndian, generate_uid)

    sop_class = DigitalXRayImageStorageForPresentation if modality == "DX" else ComputedRadiographyImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19700101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), series_uid or generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240301", "101500", "ACC-1", "1"
    ds.ReferringPhysicianName, ds.StudyDescription, ds.SeriesDescription = "", "XR CHEST PA", "CHEST PA"
    ds.SeriesNumber, ds.InstanceNumber, ds.Modality, ds.BodyPartExamined = 1, instance_number, modality, body_part
    ds.ViewPosition, ds.PatientOrientation, ds.Manufacturer = "PA", ["L", "F"], "test"
    if pixels:
        ds.Rows, ds.Columns = grey.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (grey.astype(np.uint16) * 16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def cxr3_greys(root: Path, n: int, max_side: int = 512) -> list[np.ndarray]:
    """``n`` real cxr3 images (spread over the classes) as uint8 greyscale, at most ``max_side`` pixels a side."""
    import pandas as pd
    from PIL import Image

    meta = pd.read_csv(root / "metadata.csv")
    per = (n + meta["label"].nunique() - 1) // meta["label"].nunique()
    rows = pd.concat([g.head(per) for _, g in meta.groupby("label")]).head(n)
    out = []
    for p in rows["image"]:
        img = Image.open(root / p).convert("L")
        img.thumbnail((max_side, max_side))
        out.append(np.asarray(img))
    return out
