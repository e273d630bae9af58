"""The REST API: predictions equal the library's, bad uploads get clear 4xx (never 5xx), token and size limits hold."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import make_xray
from cxrdx.inference.predictor import Predictor
from cxrdx.models.run import load_run
from test_serve_support import bad_uploads, cxr3_images, dicom_bytes, jpeg_bytes, make_app, served_run  # noqa: F401

TOL = 1e-4


@pytest.fixture(scope="module")
def onnx_client(served_run, tmp_path_factory):
    return TestClient(make_app(served_run, tmp_path_factory.mktemp("api"), runtime="onnx", max_upload_bytes=1_000_000))


def _post(client, data: bytes, name="x.png", ctype="image/png", path="/v1/predict", **kw):
    return client.post(path, files={"file": (name, data, ctype)}, **kw)


def test_health_models_and_offline_docs(onnx_client):
    h = onnx_client.get("/healthz").json()
    assert h["status"] == "ok" and h["model_id"] == "tf_efficientnet_lite0+bilstm" and h["model_version"].startswith("sha256:")
    m = onnx_client.get("/v1/models").json()["models"][0]
    assert m["classes"] == ["covid", "pneumonia", "normal"] and m["runtime"] == "onnx" and m["explain"] is True
    spec = onnx_client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/explain", "/v1/models", "/v1/predictions", "/healthz"} <= set(spec["paths"])
    assert "PredictResponse" in spec["components"]["schemas"]
    docs = onnx_client.get("/docs").text
    assert "swagger-ui-bundle.js" in docs and "cdn." not in docs  # works on a server without internet
    page = onnx_client.get("/")
    assert page.status_code == 200 and "not a diagnosis" in page.text


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_predict_equals_library_probabilities(runtime, served_run, cxr3_root, tmp_path):
    client = TestClient(make_app(served_run, tmp_path, runtime=runtime))
    paths = cxr3_images(cxr3_root, 3)
    expected = Predictor(load_run(served_run)).predict_paths(paths)
    for path, exp in zip(paths, expected):
        r = _post(client, path.read_bytes())
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["runtime"] == runtime and body["latency_ms"] > 0
        assert body["predicted"] == max(body["probabilities"], key=body["probabilities"].get)
        assert abs(sum(body["probabilities"].values()) - 1) < 1e-5
        for c, p in exp.probabilities.items():
            assert abs(body["probabilities"][c] - p) < TOL


def test_jpeg_and_dicom_uploads(onnx_client):
    arr = make_xray((300, 260), seed=3)
    for data, name, ctype in [(jpeg_bytes(arr), "x.jpg", "image/jpeg"), (dicom_bytes(arr), "x.dcm", "application/dicom")]:
        r = _post(onnx_client, data, name, ctype)
        assert r.status_code == 200, r.text
        assert set(r.json()["probabilities"]) == {"covid", "pneumonia", "normal"}
    # a DICOM sent without a .dcm name is still recognised by its DICM magic
    assert _post(onnx_client, dicom_bytes(arr), "upload.bin", "application/octet-stream").status_code == 200


EXPECTED = {
    "empty": 422, "random_bytes": 415, "text": 415, "truncated_png": 422, "too_small": 422,
    "corrupt_dicom": 422, "corrupt_jpeg": 422, "decompression_bomb": 413, "over_upload_limit": 413,
}


@pytest.mark.parametrize("upload", bad_uploads(1_000_000), ids=lambda u: u.kind)
def test_bad_uploads_get_a_clear_4xx(onnx_client, upload):
    r = _post(onnx_client, upload.data, upload.name, upload.content_type)
    assert r.status_code == EXPECTED[upload.kind], r.text
    err = r.json()["error"]
    assert err["code"] and err["message"]


def test_malformed_requests_are_4xx(onnx_client):
    assert onnx_client.post("/v1/predict").status_code == 422  # no file field
    r = onnx_client.post("/v1/predict", content=b"--x\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=x"})
    assert 400 <= r.status_code < 500
    assert onnx_client.post("/v1/explain?method=nonsense", files={"file": ("x.png", b"1")}).status_code == 422


def test_upload_size_limit_is_413_even_without_content_length(served_run, tmp_path):
    client = TestClient(make_app(served_run, tmp_path, max_upload_bytes=50_000))

    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 10_000
        yield b"\r\n--b--\r\n"

    r = client.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"


def test_token_protects_every_v1_route(served_run, tmp_path, monkeypatch, cxr3_root):
    monkeypatch.setenv("CXRDX_API_TOKEN", "s3cret")
    client = TestClient(make_app(served_run, tmp_path))
    png = cxr3_images(cxr3_root, 1)[0].read_bytes()
    calls = [("get", "/v1/models", {}), ("get", "/v1/predictions", {}),
             ("post", "/v1/predict", {"files": {"file": ("x.png", png)}}),
             ("post", "/v1/explain", {"files": {"file": ("x.png", png)}})]
    for method, path, kw in calls:
        assert getattr(client, method)(path, **kw).status_code == 401
        r = getattr(client, method)(path, headers={"Authorization": "Bearer wrong"}, **kw)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert getattr(client, method)(path, headers={"Authorization": "Bearer s3cret"}, **kw).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


def test_explain_returns_a_gradcam_overlay(onnx_client, cxr3_root):
    path = cxr3_images(cxr3_root, 1)[0]
    r = _post(onnx_client, path.read_bytes(), path="/v1/explain")
    assert r.status_code == 200, r.text
    body = r.json()
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"])))
    assert overlay.format == "PNG" and overlay.mode == "RGB" and min(overlay.size) > 100
    px = np.asarray(overlay)
    assert np.abs(px[..., 0].astype(int) - px[..., 2]).mean() > 5  # coloured heat, not the grey X-ray
    assert body["method"] == "gradcam" and abs(sum(body["probabilities"].values()) - 1) < 1e-5
    bad = _post(onnx_client, b"not an image", path="/v1/explain")
    assert bad.status_code == 415
