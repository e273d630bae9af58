"""Several models in one server (issue 13): an X-ray and a CT run, routed by the real input guard.

Two tiny runs (``layouts`` in test_serve_support: ImageNet backbone, seeded random heads; one reads xray with three
classes, one ct with two). The guard is the real :class:`~cxrdx.inference.guard.InputGuard`, fitted on synthetic
X-ray- and CT-like pictures read through the model like uploads. Layouts: ``joint`` (one guard knowing both
modalities, in the X-ray run), ``split`` (each run's guard knows its own modality: a combined decision),
``plain`` (no guard).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import make_xray
from cxrdx.config import ConfigError, ServeConfig
from cxrdx.inference.predictor import Predictor
from cxrdx.models.run import load_run
from cxrdx.serve.app import create_app
from cxrdx.tasks import CLASSES_BINARY
from test_serve_support import layouts, make_ct, make_run, png_bytes, serve_in_thread  # noqa: F401 (layouts: a fixture)

XRAY_CLASSES = {"covid", "pneumonia", "normal"}


def _app(runs, tmp_path, **settings):
    settings.setdefault("database_url", f"sqlite:///{tmp_path / 'audit.db'}")
    return create_app(ServeConfig(model_dir=",".join(str(r) for r in runs), **settings))


def _post(client, arr, path="/v1/predict", **kw):
    return client.post(path, files={"file": ("x.png", png_bytes(arr), "image/png")}, **kw)


XRAY, CT, NOISE = make_xray(seed=1234), make_ct((260, 250), seed=987), np.random.default_rng(5).integers(0, 256, (256, 256), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["joint", "split"])
def test_guard_routes_each_modality_to_its_model_and_refuses_noise(layouts, layout, tmp_path):
    xray_run, ct_run = layouts[layout]
    client = TestClient(_app(layouts[layout], tmp_path))
    r = _post(client, XRAY)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_run"], body["modality"], body["routing"]["by"]) == ("chest-xray", "xray", "guard")
    assert body["routing"]["modality"] == "xray" and body["routing"]["scores"]["xray"] <= 1
    assert set(body["probabilities"]) == XRAY_CLASSES
    # the answer is the library's, also when the torch head reuses the guard's backbone map
    expected = Predictor(load_run(xray_run)).predict_arrays([XRAY])[0]
    assert np.allclose([body["probabilities"][c] for c in ("covid", "pneumonia", "normal")], expected, atol=1e-4)

    r = _post(client, CT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_run"], body["modality"], body["routing"]["modality"]) == ("chest-ct", "ct", "ct")
    assert set(body["probabilities"]) == set(CLASSES_BINARY)
    expected = Predictor(load_run(ct_run)).predict_arrays([CT])[0]
    assert np.allclose([body["probabilities"][c] for c in CLASSES_BINARY], expected, atol=1e-4)

    noise = _post(client, NOISE)
    assert noise.status_code == 422 and noise.json()["error"]["code"] == "not_a_chest_image", noise.text
    assert set(noise.json()) == {"error"}

    explained = _post(client, CT, path="/v1/explain")
    assert explained.status_code == 200, explained.text
    assert explained.json()["model_run"] == "chest-ct" and explained.json()["overlay_png_base64"]
    assert _post(client, NOISE, path="/v1/explain").json()["error"]["code"] == "not_a_chest_image"


def test_models_lists_every_model_and_health_names_them(layouts, tmp_path):
    client = TestClient(_app(layouts["joint"], tmp_path))
    listing = client.get("/v1/models").json()
    assert listing["routing"] == "guard"
    by_run = {m["run"]: m for m in listing["models"]}
    assert set(by_run) == {"chest-xray", "chest-ct"}
    assert by_run["chest-xray"]["modality"] == "xray" and set(by_run["chest-xray"]["classes"]) == XRAY_CLASSES
    assert by_run["chest-ct"]["modality"] == "ct" and by_run["chest-ct"]["classes"] == list(CLASSES_BINARY)
    assert by_run["chest-xray"]["routes"] and by_run["chest-xray"]["guard_modalities"] == ["ct", "xray"]
    assert not by_run["chest-ct"]["guard"] and not by_run["chest-ct"]["routes"]
    assert all(m["runtime"] == "torch" and m["roi"] is None for m in listing["models"])
    assert client.get("/healthz").json()["models"] == ["chest-xray", "chest-ct"]
    assert "PredictResponse" in client.get("/openapi.json").json()["components"]["schemas"]


def test_a_request_may_name_the_model(layouts, tmp_path):
    client = TestClient(_app(layouts["joint"], tmp_path))
    for name in ("chest-ct", "ct"):
        r = _post(client, CT, params={"model": name})
        assert r.status_code == 200 and r.json()["model_run"] == "chest-ct" and r.json()["routing"]["by"] == "request"
    form = client.post("/v1/predict", files={"file": ("x.png", png_bytes(CT), "image/png")}, data={"model": "chest-ct"})
    assert form.status_code == 200 and form.json()["model_run"] == "chest-ct", form.text
    # the guard still screens: a CT slice sent to the X-ray model, and noise, are refused
    wrong = _post(client, CT, params={"model": "chest-xray"})
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "not_a_chest_image"
    assert "chest CT slice" in wrong.json()["error"]["message"]
    assert _post(client, NOISE, params={"model": "ct"}).status_code == 422
    unknown = _post(client, XRAY, params={"model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_model"
    assert "chest-xray" in unknown.json()["error"]["message"]
    both = client.post("/v1/predict?model=ct", files={"file": ("x.png", png_bytes(CT), "image/png")}, data={"model": "xray"})
    assert both.status_code == 422 and both.json()["error"]["code"] == "invalid_request"


def test_a_modality_no_served_model_reads_is_422_no_model_for_modality(layouts, tmp_path):
    client = TestClient(_app(layouts["joint"][:1], tmp_path))  # the X-ray run alone; its guard knows CT too
    r = _post(client, CT)
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_model_for_modality", r.text
    assert "ct" in r.json()["error"]["message"]
    assert _post(client, XRAY).status_code == 200
    assert client.get("/v1/models").json()["routing"] == "guard"


def test_without_a_guard_several_models_need_model(layouts, tmp_path):
    client = TestClient(_app(layouts["plain"], tmp_path))
    assert client.get("/v1/models").json()["routing"] == "request"
    r = _post(client, XRAY)
    assert r.status_code == 422 and r.json()["error"]["code"] == "model_required"
    ok = _post(client, XRAY, params={"model": "xray"})
    assert ok.status_code == 200 and ok.json()["routing"] == {"by": "request", "modality": None, "scores": None}


def test_two_models_of_one_modality_are_refused_at_start(layouts, tmp_path):
    xray = layouts["plain"][0]
    other = make_run(tmp_path / "another-xray", export=False, seed=3)
    with pytest.raises(ConfigError, match="both read xray"):
        _app([xray, other], tmp_path)
    with pytest.raises(ConfigError, match="given twice"):
        _app([xray, xray], tmp_path)
    with pytest.raises(ConfigError, match="also named"):
        _app([xray, layouts["joint"][0]], tmp_path)

    from typer.testing import CliRunner

    from cxrdx.cli import app

    result = CliRunner().invoke(app, ["serve", "--model", str(xray), "--model", str(other),
                                      "--database-url", f"sqlite:///{tmp_path / 'cli.db'}"])
    assert result.exit_code == 2, result.output
    assert "both read xray" in result.output and "Traceback" not in result.output


def test_audit_rows_name_the_answering_model(layouts, tmp_path):
    app = _app(layouts["joint"], tmp_path)
    client = TestClient(app)
    for arr in (XRAY, CT, NOISE):
        _post(client, arr)
    rows = client.get("/v1/predictions").json()["items"]
    assert [(r["model_run"], r["modality"]) for r in reversed(rows)] == [("chest-xray", "xray"), ("chest-ct", "ct")]
    assert all(r["model_id"] == "tf_efficientnet_lite0+bilstm" for r in rows)


def test_each_model_has_its_own_lock(layouts, tmp_path):
    """While the X-ray model is busy, a CT request naming its model (screened by the CT run's own guard) is answered."""
    app = _app(layouts["split"], tmp_path)
    xray_service = app.state.pool.services["chest-xray"]
    with serve_in_thread(app) as url, ThreadPoolExecutor(1) as pool:
        assert httpx.get(url + "/healthz").status_code == 200
        with xray_service._model_lock:  # a shared lock would leave the CT request waiting: result() times out
            future = pool.submit(httpx.post, url + "/v1/predict?model=ct",
                                 files={"file": ("x.png", png_bytes(CT), "image/png")}, timeout=90)
            answer = future.result(timeout=90)
        assert answer.status_code == 200 and answer.json()["model_run"] == "chest-ct", answer.text
