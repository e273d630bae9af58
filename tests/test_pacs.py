"""DICOM results and the PACS node, end to end against a real Orthanc (Debian's ``orthanc`` package).

The source images are real cxr3 X-rays wrapped as CR DICOMs with a patient name and ID that must be
copied into the result objects and must never appear in the node's logs.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from test_serve_support import served_run  # noqa: F401 (the shared model run: ImageNet backbone + seeded head)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from pacs_orthanc import OrthancServer, chest_dicom, cxr3_greys, orthanc_binary  # noqa: E402

PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-0042"
IN_CI = os.environ.get("CI") == "true"


def _need(tool: str, found: bool) -> None:
    if not found:
        if IN_CI:
            pytest.fail(f"{tool} is not installed (scripts/test.sh installs it as root)")
        pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="module")
def greys(cxr3_root):
    return cxr3_greys(cxr3_root, 3)


@pytest.fixture(scope="module")
def analyzer(served_run):  # noqa: F811
    """One intra-op thread (as ``cxrdx pacs --threads 1``): on a shared CI CPU, 2 threads are 10-40x slower."""
    import torch

    from cxrdx.pacs.analysis import Analyzer

    threads = torch.get_num_threads()
    yield Analyzer(served_run, threads=1)
    torch.set_num_threads(threads)


def dciodvfy_errors(data: bytes, tmp_path: Path) -> list[str]:
    path = tmp_path / "object.dcm"
    path.write_bytes(data)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_result_objects_are_valid_dicom(analyzer, greys, tmp_path):
    from cxrdx.pacs.results import DISCLAIMER, report_values, to_bytes

    source_bytes = chest_dicom(greys[0], patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
    source = pydicom.dcmread(io.BytesIO(source_bytes))
    result = analyzer.analyse(source_bytes)
    sr_bytes, sc_bytes = to_bytes(result.objects.report), to_bytes(result.objects.overlay)
    sr, sc = pydicom.dcmread(io.BytesIO(sr_bytes)), pydicom.dcmread(io.BytesIO(sc_bytes))

    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and sr.Modality == "SR"
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    for ds in (sr, sc):  # same patient and study, new series and instance
        assert ds.PatientName == PATIENT_NAME and ds.PatientID == PATIENT_ID
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.AccessionNumber == source.AccessionNumber
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SOPInstanceUID != source.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert sr.SeriesInstanceUID != sc.SeriesInstanceUID

    values = report_values(sr)
    probs = values["probabilities"]
    assert set(probs) == {"covid", "pneumonia", "normal"} and abs(sum(probs.values()) - 1) < 1e-6
    assert values["predicted"] == max(probs, key=probs.get) == result.predicted
    for c, p in result.probabilities.items():
        assert abs(probs[c] - p) < 1e-6
    assert values["Algorithm Name"] == analyzer.identity.id and values["Algorithm Version"] == analyzer.identity.version
    assert values["Disclaimer"] == DISCLAIMER and "highest probability" in values["Operating point"]
    assert values["source_sop_instance_uid"] == source.SOPInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    ref_series = evidence.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == source.SeriesInstanceUID
    assert ref_series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    assert sc.PhotometricInterpretation == "RGB" and sc.BurnedInAnnotation == "YES"
    assert sc.pixel_array.ndim == 3 and sc.pixel_array.shape[2] == 3
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert DISCLAIMER in sc.DerivationDescription

    # the same model on the same source derives the same UIDs: re-sending after a crash stores nothing new
    again = analyzer.analyse(source_bytes)
    assert again.objects.report.SOPInstanceUID == sr.SOPInstanceUID

    _need("dciodvfy (Debian dicom3tools)", shutil.which("dciodvfy") is not None)
    assert dciodvfy_errors(sr_bytes, tmp_path) == []
    assert dciodvfy_errors(sc_bytes, tmp_path) == []


def test_cli_dicom_writes_objects_and_refuses_non_chest(served_run, analyzer, greys, tmp_path):  # noqa: F811
    from cxrdx.cli import app

    src = tmp_path / "chest.dcm"
    src.write_bytes(chest_dicom(greys[1]))
    r = CliRunner().invoke(app, ["dicom", str(src), "--model", str(served_run), "--out", str(tmp_path / "out"),
                                 "--no-overlay", "--covid-threshold", "0.3", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "chest_sr.dcm").is_file() and not (tmp_path / "out" / "chest_overlay.dcm").exists()
    from cxrdx.pacs.results import report_values

    values = report_values(pydicom.dcmread(tmp_path / "out" / "chest_sr.dcm"))
    assert "0.3000" in values["Operating point"] and values["Covid flagged at operating point"] in ("Yes", "No")

    knee = tmp_path / "knee.dcm"
    knee.write_bytes(chest_dicom(greys[1], body_part="KNEE"))
    r = CliRunner().invoke(app, ["dicom", str(knee), "--model", str(served_run), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "body part KNEE is not chest" in r.output


def _series_modalities(orthanc: OrthancServer, study_id: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for series in orthanc.get(f"/studies/{study_id}/series"):
        out.setdefault(series["MainDicomTags"]["Modality"], []).extend(series["Instances"])
    return out


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_orthanc_node_end_to_end(analyzer, greys, tmp_path, caplog):
    from cxrdx.pacs.node import Backoff, PacsNode
    from cxrdx.pacs.orthanc import OrthancClient
    from cxrdx.pacs.results import report_values
    from cxrdx.pacs.state import NodeState

    _need("Orthanc (Debian orthanc)", orthanc_binary() is not None)
    caplog.set_level(logging.DEBUG, logger="cxrdx")
    db = f"sqlite:///{tmp_path / 'audit.db'}"
    orthanc = OrthancServer(tmp_path / "orthanc").start()
    try:
        chest = orthanc.upload(chest_dicom(greys[0], patient_name=PATIENT_NAME, patient_id=PATIENT_ID))
        orthanc.upload(chest_dicom(greys[1], body_part="SKULL", study_uid=None))  # not a chest: skipped
        orthanc.upload(chest_dicom(greys[1], modality="CR", pixels=False))  # no pixel data: failed, not fatal

        def node() -> PacsNode:
            client = OrthancClient(orthanc.url)
            return PacsNode(client, analyzer, NodeState(db, client.url), poll_interval=0.2, from_start=True,
                            backoff=Backoff(first=0.2, max=1.0))

        first = node()
        stats = first.run(once=True)
        assert (stats.done, stats.skipped, stats.failed) == (1, 1, 1)
        series = _series_modalities(orthanc, chest["ParentStudy"])
        assert sorted(series) == ["CR", "OT", "SR"] and all(len(v) == 1 for v in series.values())
        sr = pydicom.dcmread(io.BytesIO(first.client.file(series["SR"][0])))
        sc = pydicom.dcmread(io.BytesIO(first.client.file(series["OT"][0])))
        values = report_values(sr)
        assert abs(sum(values["probabilities"].values()) - 1) < 1e-6
        assert sr.PatientName == sc.PatientName == PATIENT_NAME and sc.PhotometricInterpretation == "RGB"
        assert first.state.counts() == {"done": 1, "skipped": 1, "failed": 1}
        first.client.close()

        # a restarted node carries on from its cursor: nothing analysed or stored twice
        n_instances = len(orthanc.get("/instances"))
        second = node()
        assert second.run(once=True).done == 0
        assert second.state.counts() == {"done": 1, "skipped": 3, "failed": 1}  # + the SR and SC stored above
        second.state.set_last_seq(0, rewind=True)  # even re-reading the whole feed analyses nothing twice
        assert second.run(once=True).done == 0
        assert len(orthanc.get("/instances")) == n_instances
        # the command line node on the same database: nothing new to do either
        from cxrdx.cli import app

        r = CliRunner().invoke(app, ["pacs", "--orthanc", orthanc.url, "--model", str(analyzer.run_dir),
                                     "--database-url", db, "--once", "--threads", "1"])
        assert r.exit_code == 0 and "analysed 0" in r.output, r.output

        # Orthanc goes down while the node runs: it waits with backoff and carries on when Orthanc is back
        worker = threading.Thread(target=second.run, daemon=True)
        worker.start()
        time.sleep(0.5)
        orthanc.stop()
        _wait(lambda: second.retries >= 2, 30, "the node to retry")
        orthanc.start()
        late = orthanc.upload(chest_dicom(greys[2], patient_name=PATIENT_NAME, patient_id=PATIENT_ID))
        _wait(lambda: second.state.counts().get("done") == 2, 120, "the node to analyse the image sent after the outage")
        second.stop()
        worker.join(30)
        assert not worker.is_alive()
        assert sorted(_series_modalities(orthanc, late["ParentStudy"])) == ["CR", "OT", "SR"]
        assert any("retrying" in r.getMessage() for r in caplog.records)
    finally:
        orthanc.stop()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("cxrdx"))
    assert "skipped: body part SKULL is not chest" in logged and "not analysed: unsupported_dicom" in logged
    assert PATIENT_NAME not in logged and PATIENT_ID not in logged and "Doe" not in logged
