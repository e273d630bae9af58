"""The audit log: one row per served prediction, no patient data, SQLite by default and PostgreSQL by URL."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import require
from fastapi.testclient import TestClient

from cxrdx.config import ServeConfig
from cxrdx.serve.audit import AuditEntry, AuditLog
from test_serve_support import cxr3_images, dicom_bytes, free_port, make_app, served_run  # noqa: F401


def test_each_prediction_is_recorded_without_patient_data(served_run, cxr3_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_API_TOKEN", "tok")
    app = make_app(served_run, tmp_path, runtime="onnx")
    client = TestClient(app)
    auth = {"Authorization": "Bearer tok"}
    png = cxr3_images(cxr3_root, 1)[0].read_bytes()
    dcm = dicom_bytes(patient_name="Doe^Jane")
    uploads = [("Doe_Jane_1961-02-03.png", png, "/v1/predict"), ("Doe_Jane.dcm", dcm, "/v1/predict"),
               ("Doe_Jane_2.png", png, "/v1/explain")]
    answers = []
    for name, data, route in uploads:
        r = client.post(route, files={"file": (name, data)}, headers=auth)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    assert client.post("/v1/predict", files={"file": ("Doe_Jane.png", b"junk")}, headers=auth).status_code == 415
    assert client.get("/v1/predictions").status_code == 401

    page = client.get("/v1/predictions", headers=auth).json()
    assert page["total"] == 3  # the refused upload is not a prediction
    rows = list(reversed(page["items"]))  # oldest first
    for (name, data, route), row, answer in zip(uploads, rows, answers):
        assert row["input_sha256"] == hashlib.sha256(data).hexdigest() == answer["input_sha256"]
        assert row["input_bytes"] == len(data) and row["endpoint"] == route.rsplit("/", 1)[1]
        assert row["probabilities"] == pytest.approx(answer["probabilities"], abs=1e-6)
        assert row["model_version"] == answer["model_version"] and row["client"] == "unknown"  # TestClient's peer "testclient" is not an IP address
        assert row["latency_ms"] == pytest.approx(answer["latency_ms"]) and row["created_at"].endswith(("Z", "+00:00"))
    assert [r["runtime"] for r in rows] == ["onnx", "onnx", "torch"]
    # nothing that could identify the patient reaches the database
    app.state.audit.close()
    blob = b"".join(Path(p).read_bytes() for p in glob.glob(str(tmp_path / "audit.db*")))
    assert blob and b"Doe" not in blob and b"PID-0042" not in blob and b".png" not in blob
    assert "Doe" not in str(page)


def test_default_database_is_sqlite_under_cxrdx_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CXRDX_DATABASE_URL", raising=False)
    url = ServeConfig().resolved_database_url()
    assert url == f"sqlite:///{tmp_path / 'home' / 'audit.db'}"
    log = AuditLog(url)
    assert (tmp_path / "home" / "audit.db").is_file() and log.backend == "sqlite" and log.count() == 0
    monkeypatch.setenv("CXRDX_DATABASE_URL", "sqlite:///elsewhere.db")
    assert ServeConfig().resolved_database_url() == "sqlite:///elsewhere.db"
    assert ServeConfig(database_url="postgresql+psycopg://u@h/db").resolved_database_url() == "postgresql+psycopg://u@h/db"


def _entry(i: int) -> AuditEntry:
    return AuditEntry(endpoint="predict", model_id="m", model_version="sha256:0", runtime="onnx",
                      input_sha256=f"{i:064x}", input_bytes=i, predicted="covid",
                      probabilities={"covid": 0.5, "pneumonia": 0.3, "normal": 0.2}, latency_ms=1.5, client="127.0.0.1")


def test_concurrent_writes_lose_no_rows(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    log = AuditLog(f"sqlite:///{tmp_path / 'a.db'}")
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda i: log.record(_entry(i)), range(400)))
    assert log.count() == 400 and len(set(ids)) == 400
    rows = log.latest(1000)
    assert sorted(r.input_bytes for r in rows) == list(range(400))
    assert [r.id for r in rows] == sorted(ids, reverse=True)  # newest first


def _initdb() -> str | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None)
    return found


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server (skipped where PostgreSQL or psycopg is not installed)."""
    import psycopg  # noqa: F401  (the test extra installs it)

    initdb = _initdb()
    require(initdb is not None, "PostgreSQL (apt-get install postgresql)")
    bindir = Path(initdb).parent
    as_root = os.geteuid() == 0
    require(not as_root or shutil.which("runuser") is not None, "runuser (to start PostgreSQL as root)")
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="cxrdx-pg-", dir="/tmp"))
    data = base / "data"
    if as_root:
        shutil.chown(base, "postgres")
    port = free_port()
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60",
           "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1"]
    subprocess.run([*ctl, "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_postgresql_audit_log(postgres_url, served_run, cxr3_root, tmp_path):
    app = make_app(served_run, tmp_path, runtime="onnx", database_url=postgres_url)
    client = TestClient(app)
    assert client.get("/healthz").json()["audit_backend"] == "postgresql"
    png = cxr3_images(cxr3_root, 1)[0].read_bytes()
    before = client.get("/v1/predictions").json()["total"]
    for _ in range(3):
        assert client.post("/v1/predict", files={"file": ("x.png", png)}).status_code == 200
    page = client.get("/v1/predictions", params={"limit": 2}).json()
    assert page["total"] == before + 3 and len(page["items"]) == 2
    assert page["items"][0]["input_sha256"] == hashlib.sha256(png).hexdigest()
    assert page["items"][0]["created_at"].endswith(("Z", "+00:00"))
    log = AuditLog(postgres_url)
    assert log.backend == "postgresql" and log.count() == before + 3
    log.close()


OLD_TABLE = {  # cxrdx_predictions as it was before the server could hold several models (no model_run, modality)
    "sqlite": "CREATE TABLE cxrdx_predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at DATETIME, ",
    "postgresql": "CREATE TABLE cxrdx_predictions (id SERIAL PRIMARY KEY, created_at TIMESTAMP WITH TIME ZONE, ",
}


def _old_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS cxrdx_predictions"))
        conn.execute(text(OLD_TABLE[engine.dialect.name] + "endpoint VARCHAR(32), model_id VARCHAR(128), "
                          "model_version VARCHAR(64), runtime VARCHAR(16), input_sha256 VARCHAR(64), input_bytes INTEGER, "
                          "predicted VARCHAR(64), probabilities JSON, latency_ms FLOAT, client VARCHAR(64))"))
        conn.execute(text("INSERT INTO cxrdx_predictions (created_at, endpoint, model_id, model_version, runtime, input_sha256, "
                          "input_bytes, predicted, probabilities, latency_ms, client) VALUES ('2026-01-01 00:00:00', 'predict', "
                          "'m', 'sha256:0', 'onnx', 'ab', 3, 'covid', '{\"covid\": 1.0}', 1.0, '127.0.0.1')"))
    engine.dispose()


def _check_migration(url: str) -> None:
    from cxrdx.serve.schemas import AuditRecord

    _old_database(url)
    log = AuditLog(url)
    assert log.migrated == ["model_run", "modality"]
    log.record(_entry(7).model_copy(update={"model_run": "chest-ct", "modality": "ct"}))
    new, old = [AuditRecord.model_validate(r) for r in log.latest()]
    assert (new.model_run, new.modality, new.input_bytes) == ("chest-ct", "ct", 7)
    assert (old.model_run, old.modality, old.input_bytes) == (None, None, 3)
    log.close()
    again = AuditLog(url)  # opening it again changes nothing; a fresh database has the columns from the start
    assert again.migrated == [] and again.count() == 2
    again.close()


def test_an_older_sqlite_audit_database_gains_the_model_columns(tmp_path):
    _check_migration(f"sqlite:///{tmp_path / 'old.db'}")
    fresh = AuditLog(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert fresh.migrated == [] and fresh.record(_entry(1).model_copy(update={"model_run": "r", "modality": "xray"})) == 1
    assert fresh.latest()[0].model_run == "r"


def test_an_older_postgresql_audit_database_gains_the_model_columns(postgres_url):
    _check_migration(postgres_url)
