"""The input guard (issue 13): chest X-ray / CT slice / neither, from the backbone's pooled features.

Fast tests check the statistics and the plumbing (save/load without pickle, 422 on the server, a skipped line
in the CLI); the slow one fits a guard on a small real slice of cxr3 + ct2 and checks it on held-out patients,
scikit-image's pictures and noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import make_xray
from cxrdx.inference.guard import GUARD_INFO, GUARD_WEIGHTS, GuardError, InputGuard, NotAChestImageError
from test_serve_support import make_app, make_run, png_bytes


def _blobs(rng, centre, n, scale=1.0):
    """Non-negative points around ``centre`` (pooled ReLU features are non-negative)."""
    return np.maximum(centre + scale * rng.normal(size=(n, len(centre))), 0.0)


XRAY_CENTRE = np.r_[np.full(8, 6.0), np.full(8, 0.5)]
CT_CENTRE = np.r_[np.full(8, 0.5), np.full(8, 6.0)]
FAR_CENTRE = np.tile([6.0, 0.5], 8)


@pytest.mark.parametrize("method", ["knn", "mahalanobis"])
def test_guard_routes_each_modality_and_refuses_far_points(tmp_path, method):
    rng = np.random.default_rng(0)
    sources = np.repeat(["a", "b"], [350, 150])
    guard = InputGuard.fit({"xray": _blobs(rng, XRAY_CENTRE, 500), "ct": _blobs(rng, CT_CENTRE, 500)},
                           groups={"xray": np.arange(500) // 2}, sources={"xray": sources},
                           backbone="b", weights_tag="w", image_size=224, false_refusal=0.01, method=method)
    assert set(guard.info["calibration"]["xray"]["per_source_quantile"]) == {"a", "b"}
    assert guard.thresholds["xray"] == max(guard.info["calibration"]["xray"]["per_source_quantile"].values())
    held_x, held_c = _blobs(rng, XRAY_CENTRE, 500), _blobs(rng, CT_CENTRE, 500)
    far = _blobs(rng, FAR_CENTRE, 200)
    routes = lambda feats: [v.modality for v in guard.decide(feats)]  # noqa: E731
    assert np.mean([m == "xray" for m in routes(held_x)]) >= 0.95
    assert np.mean([m == "ct" for m in routes(held_c)]) >= 0.95
    assert all(m is None for m in routes(far))
    # false refusals on fresh held-out points are near the stated 1 %
    assert np.mean([m is None for m in routes(held_x)]) <= 0.05

    guard.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([GUARD_INFO, GUARD_WEIGHTS])
    saved = json.loads((tmp_path / GUARD_INFO).read_text())
    assert saved["modalities"] == ["ct", "xray"] and saved["method"] == guard.method
    again = InputGuard.load(tmp_path)
    assert routes(held_x[:50]) == [v.modality for v in again.decide(held_x[:50])]


def test_a_guard_saved_before_the_method_field_loads_as_the_gaussian(tmp_path):
    rng = np.random.default_rng(2)
    guard = InputGuard.fit({"xray": _blobs(rng, XRAY_CENTRE, 100)}, backbone="b", weights_tag="w", image_size=224,
                           method="mahalanobis")
    guard.save(tmp_path)
    meta = json.loads((tmp_path / GUARD_INFO).read_text())
    del meta["method"]
    (tmp_path / GUARD_INFO).write_text(json.dumps(meta))
    old = InputGuard.load(tmp_path)
    feats = _blobs(rng, XRAY_CENTRE, 20)
    assert old.method == "mahalanobis-ledoit-wolf"
    assert np.allclose(old.distances(feats)["xray"], guard.distances(feats)["xray"])


def test_guard_errors_are_one_line(tmp_path):
    with pytest.raises(GuardError, match="no input guard"):
        InputGuard.load(tmp_path)
    (tmp_path / GUARD_INFO).write_text("{not json")
    (tmp_path / GUARD_WEIGHTS).write_bytes(b"junk")
    with pytest.raises(GuardError, match="unreadable input guard"):
        InputGuard.load(tmp_path)
    rng = np.random.default_rng(1)
    with pytest.raises(GuardError, match="at least 20"):
        InputGuard.fit({"xray": rng.normal(size=(15, 4))}, backbone="b", weights_tag="w", image_size=224)
    with pytest.raises(GuardError, match="unknown guard method"):
        InputGuard.fit({"xray": rng.normal(size=(30, 4))}, backbone="b", weights_tag="w", image_size=224, method="svm")


@pytest.fixture(scope="module")
def guarded_run(tmp_path_factory):
    """A run (ImageNet backbone, random head) whose guard knows synthetic X-ray-like pictures only."""
    import torch

    from cxrdx.inference.guard_fit import array_features
    from cxrdx.models.run import load_run

    run = make_run(tmp_path_factory.mktemp("guarded") / "run", export=False)
    model = load_run(run)
    torch.manual_seed(0)
    pics = [make_xray((int(200 + 7 * (i % 9)), int(220 + 11 * (i % 7))), seed=i) for i in range(90)]
    feats = array_features(model, pics)
    guard = InputGuard.fit({"xray": feats}, backbone=model.info.backbone,
                           weights_tag=model.info.weights_tag, image_size=model.info.image_size, false_refusal=0.02)
    guard.save(run)
    return run


def test_server_refuses_a_photograph_with_422_not_a_chest_image(guarded_run, tmp_path):
    import skimage.data

    client = TestClient(make_app(guarded_run, tmp_path, max_upload_bytes=2_000_000))
    photo = client.post("/v1/predict", files={"file": ("coffee.png", png_bytes(skimage.data.coffee()), "image/png")})
    assert photo.status_code == 422, photo.text
    assert photo.json()["error"]["code"] == "not_a_chest_image"
    assert set(photo.json()) == {"error"}
    xray = client.post("/v1/predict", files={"file": ("x.png", png_bytes(make_xray(seed=1234)), "image/png")})
    assert xray.status_code == 200, xray.text
    described = client.get("/v1/models").json()["models"][0]
    assert described["guard"] is True and described["modality"] == "xray"


def test_cli_predict_reports_and_skips_a_refused_image(guarded_run, tmp_path):
    import skimage.data
    from typer.testing import CliRunner

    from cxrdx.cli import app

    (tmp_path / "camera.png").write_bytes(png_bytes(skimage.data.camera()))
    (tmp_path / "chest.png").write_bytes(png_bytes(make_xray(seed=4321)))
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "camera.png"), str(tmp_path / "chest.png"),
                                      "--model", str(guarded_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "camera.png" in result.output and "not a chest" in result.output
    assert "1 predicted, 1 skipped" in result.output
    # without the guard both are answered
    from cxrdx.inference.runtimes import create_predictor

    preds = create_predictor(guarded_run, guard=False).predict_paths([tmp_path / "camera.png"])
    assert preds[0].ok
    refused = create_predictor(guarded_run).predict_paths([tmp_path / "camera.png"])[0]
    assert isinstance(refused.error, NotAChestImageError) and refused.error.code == "not_a_chest_image"


@pytest.mark.slow
def test_guard_on_real_cxr3_and_ct2_held_out_patients(cxr3_root, ct2_root, feature_cache_dir):
    """Small real fixture: 150 X-ray + 150 CT training-side images; held-out patients, skimage pictures, noise."""
    from cxrdx.data.manifest import load_manifest
    from cxrdx.inference.guard_fit import evaluate_guard, fit_guard, modality_rows, ood_features
    from cxrdx.models.factory import create_model
    from cxrdx.tasks import CLASSES_BINARY

    model = create_model("tf_efficientnet_lite0", "pool", weights="imagenet")
    parts = {}
    for modality, root, classes in (("xray", cxr3_root, None), ("ct", ct2_root, CLASSES_BINARY)):
        df = load_manifest(root, **({"classes": classes} if classes else {}))
        patients = df["patient_id"].drop_duplicates().sample(n=min(150, df["patient_id"].nunique()), random_state=0)
        small = df[df["patient_id"].isin(set(patients))].reset_index(drop=True)
        parts[modality] = modality_rows(model, small, feature_cache_dir, test_fraction=0.25, val_fraction=0.25)
    guard = fit_guard(model, parts, false_refusal=0.02)
    ood, _ = ood_features(model, noise=25)
    report = evaluate_guard(guard, parts, ood)
    for modality in ("xray", "ct"):
        assert report["held_out"][modality]["routed_to_other_modality"]["count"] == 0
        assert report["held_out"][modality]["routed_correctly"]["rate"] >= 0.85, report["held_out"][modality]
    assert report["out_of_distribution"]["skimage"]["refused"]["rate"] >= 0.9, report["out_of_distribution"]
    assert report["out_of_distribution"]["noise"]["refused"]["rate"] == 1.0


def test_onnx_predictor_screens_with_the_graphs_own_pooled_features(guarded_run, tmp_path):
    """fp32 ONNX: one backbone pass answers and feeds the guard (the torch backbone is never called); same verdicts
    and features as torch. int8 graphs keep the torch guard (their features are not exact)."""
    import shutil

    import skimage.data
    import torch

    from cxrdx.data.io import read_image
    from cxrdx.inference.guard import pooled
    from cxrdx.inference.onnx_export import export_run
    from cxrdx.inference.runtimes import create_predictor

    run = Path(shutil.copytree(guarded_run, tmp_path / "run"))
    export_run(run)
    (tmp_path / "coffee.png").write_bytes(png_bytes(skimage.data.coffee()))
    (tmp_path / "chest.png").write_bytes(png_bytes(make_xray(seed=99)))
    paths = [tmp_path / "coffee.png", tmp_path / "chest.png"]
    reference = create_predictor(run, "torch").predict_paths(paths)

    onnx = create_predictor(run, "onnx")
    assert onnx.guard_features

    def no_torch_backbone(batch):
        raise AssertionError("the torch backbone ran beside ONNX Runtime")

    onnx.screen.features = no_torch_backbone
    got = onnx.predict_paths(paths)
    assert [p.ok for p in got] == [p.ok for p in reference] == [False, True]
    assert got[0].error.code == "not_a_chest_image"
    assert np.allclose([got[1].probabilities[c] for c in onnx.classes],
                       [reference[1].probabilities[c] for c in onnx.classes], atol=1e-4)
    batch = torch.stack([onnx.tensor(read_image(p)) for p in paths])
    with torch.inference_mode():
        torch_feats = pooled(onnx.screen.model.forward_features(batch))
    assert np.allclose(onnx.probabilities_and_pooled(batch)[1], torch_feats, rtol=1e-4, atol=1e-4)


def test_server_with_onnx_runtime_screens_and_answers_from_one_onnx_pass(guarded_run, tmp_path):
    """``cxrdx serve --runtime onnx`` with a guard: the routed path (examine -> score) answers from the ONNX graph's
    own pass; the torch backbone is never called; a photograph is still 422 not_a_chest_image."""
    import shutil

    import skimage.data

    from cxrdx.inference.onnx_export import export_run
    from cxrdx.serve.service import Examined

    run = Path(shutil.copytree(guarded_run, tmp_path / "run"))
    export_run(run)
    app = make_app(run, tmp_path, max_upload_bytes=2_000_000, runtime="onnx")
    client = TestClient(app)

    def no_torch_backbone(batch):
        raise AssertionError("the torch backbone ran beside ONNX Runtime")

    app.state.service.screen.features = no_torch_backbone
    photo = client.post("/v1/predict", files={"file": ("coffee.png", png_bytes(skimage.data.coffee()), "image/png")})
    assert photo.status_code == 422 and photo.json()["error"]["code"] == "not_a_chest_image", photo.text
    chest = client.post("/v1/predict", files={"file": ("x.png", png_bytes(make_xray(seed=1234)), "image/png")})
    assert chest.status_code == 200, chest.text
    assert chest.json()["routing"]["modality"] == "xray"
    (tmp_path / "t").mkdir()
    torch_answer = TestClient(make_app(guarded_run, tmp_path / "t", max_upload_bytes=2_000_000)).post(
        "/v1/predict", files={"file": ("x.png", png_bytes(make_xray(seed=1234)), "image/png")}).json()
    assert np.allclose([chest.json()["probabilities"][c] for c in torch_answer["probabilities"]],
                       list(torch_answer["probabilities"].values()), atol=1e-4)
    x = app.state.service.prepare_grey(make_xray(seed=1234))
    assert isinstance(app.state.service.examine(x)[1], Examined)  # what the ONNX path hands from examine to score
