"""Region of interest (issue 12): one preprocessing path for features, CLI, server, ONNX and Grad-CAM.

The segmenter here is small and fixed (offline ImageNet encoder, seeded decoder, a sharpened head): it
paints a confident, deterministic lung region on the synthetic X-rays, which is all these tests need.
The classifier is the ImageNet backbone with a seeded random head (like the serve tests).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cxrdx.config import ConfigError, DataConfig, load_config
from cxrdx.data.transforms import build_transform, preprocess
from cxrdx.features.cache import cache_key, extract_features
from cxrdx.features.roi import EXTRA_KEY, RegionOfInterest, RoiError, RoiSetting, record_setting
from cxrdx.models.outputs import probabilities
from cxrdx.models.segmenter import SegmenterInfo, create_segmenter, export_onnx, save_segmenter

from conftest import make_xray
from test_serve_support import make_app, png_bytes, served_run  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create_segmenter(SegmenterInfo(image_size=64, min_confidence=0.5), weights="imagenet")
    with torch.no_grad():
        model.unet.segmentation_head[0].weight.mul_(30)  # confident masks: no pixel near the threshold
    run_dir = save_segmenter(model.eval(), tmp_path_factory.mktemp("seg") / "seg")
    export_onnx(model, run_dir, atol=0.05)  # logits scaled x30: |diff| 1e-3 in logits, far from the threshold
    return run_dir


def _roi_run(run_dir, seg_dir, roi: str = "lung_crop", intensity: str = "none", fit: str = "squash"):
    """A classifier run folder that records ``roi`` (saved, then exported to ONNX with it)."""
    from cxrdx.inference.onnx_export import export_run
    from cxrdx.models.factory import create_model
    from cxrdx.models.run import save_run

    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", "bilstm", weights="imagenet")
    record_setting(model.info, RoiSetting(roi, intensity, lung_model=str(seg_dir), fit=fit).resolved())
    save_run(model, run_dir)
    export_run(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def crop_run(seg_dir, tmp_path_factory):
    return _roi_run(tmp_path_factory.mktemp("crop") / "run", seg_dir)


@pytest.fixture(scope="module")
def xray_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "chest.png"
    Image.fromarray(make_xray((200, 240), seed=1)).save(path)
    return path


def test_config_validates_roi_names():
    cfg = load_config(overrides=["data.roi=lung_mask", "data.intensity=clahe", "data.lung_model=/x"])
    assert (cfg.data.roi, cfg.data.intensity) == ("lung_mask", "clahe")
    with pytest.raises(ConfigError, match="lung_crop"):
        load_config(overrides=["data.roi=lungs"])
    with pytest.raises(ConfigError, match="clahe"):
        load_config(overrides=["data.intensity=gamma"])
    with pytest.raises(ConfigError, match="lung_model"):
        load_config(overrides=["data.roi=lung_crop"])
    with pytest.raises(RoiError, match="not a lung segmenter"):
        RoiSetting.from_config(DataConfig(roi="lung_crop", lung_model="/nonexistent"))


def test_square_box_centres_grows_the_short_side_then_cuts_the_long_one():
    from cxrdx.features.roi import square_box

    assert square_box((0, 0, 240, 200), (200, 240)) == (20, 0, 220, 200)  # whole wide image: centre square
    assert square_box((0, 0, 100, 160), (160, 100)) == (0, 30, 100, 130)  # whole tall image
    assert square_box((100, 50, 140, 150), (200, 240)) == (70, 50, 170, 150)  # a tall lung box grows sideways
    assert square_box((0, 20, 30, 120), (200, 240)) == (0, 20, 100, 120)  # ... shifted back inside the image
    assert square_box((10, 10, 230, 60), (200, 240)) == (20, 0, 220, 200)  # too wide to grow: cut to the image's side
    x0, y0, x1, y1 = square_box((3, 7, 61, 19), (50, 70))
    assert x1 - x0 == y1 - y0 and 0 <= x0 and x1 <= 70 and 0 <= y0 and y1 <= 50


def test_fit_is_validated_and_keys_the_cache():
    cfg = load_config(overrides=["data.fit=square"])
    assert RoiSetting.from_config(cfg.data) == RoiSetting(fit="square")
    with pytest.raises(ConfigError, match="squash, square"):
        load_config(overrides=["data.fit=letterbox"])
    square = RoiSetting(fit="square")
    assert not square.is_identity and square.key == "full-none-square"
    assert RoiSetting.from_dict(square.to_dict()) == square and RoiSetting.from_dict({"roi": "full"}).fit == "squash"


def test_fit_square_is_the_same_on_cli_server_and_onnx(seg_dir, xray_file, tmp_path):
    """``data.fit=square`` with the whole image: the centre square, identically in torch, ONNX and the server."""
    from fastapi.testclient import TestClient

    from cxrdx.data.io import read_image
    from cxrdx.inference.runtimes import create_predictor
    from cxrdx.models.run import load_run

    run = _roi_run(tmp_path / "square", seg_dir, roi="full", fit="square")
    torch_row = create_predictor(run, "torch").predict_paths([xray_file])[0].to_dict()
    onnx_row = create_predictor(run, "onnx").predict_paths([xray_file])[0].to_dict()
    with TestClient(make_app(run, tmp_path)) as client:
        served = client.post("/v1/predict", files={"file": ("chest.png", xray_file.read_bytes(), "image/png")}).json()
        assert client.get("/v1/models").json()["models"][0]["roi"]["fit"] == "square"
    assert torch_row["roi"]["box"] == onnx_row["roi"]["box"] == served["roi"]["box"] == [20, 0, 220, 200]
    ref = torch_row["probabilities"]
    for other in (onnx_row["probabilities"], served["probabilities"]):
        assert max(abs(other[c] - ref[c]) for c in ref) < 1e-4
    model = load_run(run)
    square = np.ascontiguousarray(read_image(xray_file)[:, 20:220])
    with torch.inference_mode():
        plain = probabilities(model(preprocess(square, build_transform(224, model.spec.mean, model.spec.std))[None])).numpy()[0]
    assert max(abs(plain[i] - ref[c]) for i, c in enumerate(model.classes)) < 1e-6


def test_cache_key_includes_roi_and_segmenter(seg_dir):
    full = RoiSetting()
    assert full.key == "" and cache_key("b", "w", 224, "plain", full.key) == cache_key("b", "w", 224)  # old caches valid
    keys = {RoiSetting(roi, intensity, lung_model=str(seg_dir)).resolved().key
            for roi in ("full", "lung_crop", "lung_mask") for intensity in ("none", "clahe")}
    assert len(keys) == 6
    crop = RoiSetting("lung_crop", lung_model=str(seg_dir)).resolved()
    assert crop.lung_digest.startswith("sha256:") and crop.lung_digest[7:19] in crop.key


def test_roi_full_is_bit_identical_to_the_plain_path(served_run, xray_file):
    """A model trained before ROIs (no roi in model.json) predicts exactly as the plain decode + transform."""
    from cxrdx.data.io import read_image
    from cxrdx.inference.runtimes import create_predictor
    from cxrdx.models.run import load_run

    assert EXTRA_KEY not in json.loads((served_run / "model.json").read_text())["extra"]
    model = load_run(served_run)
    grey = read_image(xray_file)
    with torch.inference_mode():
        before = probabilities(model(preprocess(grey, build_transform(224, model.spec.mean, model.spec.std))[None])).numpy()[0]
    pred = create_predictor(served_run, "torch", model=model).predict_paths([xray_file])[0]
    assert np.array_equal(np.array([pred.probabilities[c] for c in model.classes], np.float32), before)
    assert pred.roi is None and "roi" not in pred.to_dict()


def test_same_roi_and_probabilities_on_cli_server_and_onnx(crop_run, xray_file, tmp_path):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from cxrdx.cli import app as cli
    from cxrdx.data.io import read_image
    from cxrdx.inference.runtimes import create_predictor
    from cxrdx.models.run import load_run

    out = tmp_path / "cli.json"
    res = CliRunner().invoke(cli, ["predict", str(xray_file), "--model", str(crop_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    cli_row = json.loads(out.read_text())[0]
    assert cli_row["roi"]["applied"] == "lung_crop" and cli_row["roi_fallback"] is False
    box = cli_row["roi"]["box"]
    assert box != [0, 0, 240, 200]  # really cropped
    onnx_row = create_predictor(crop_run, "onnx").predict_paths([xray_file])[0].to_dict()
    with TestClient(make_app(crop_run, tmp_path)) as client:
        served = client.post("/v1/predict", files={"file": ("chest.png", xray_file.read_bytes(), "image/png")}).json()
    assert served["roi"]["box"] == onnx_row["roi"]["box"] == box and served["roi_fallback"] is False
    ref = cli_row["probabilities"]
    for other in (onnx_row["probabilities"], served["probabilities"]):
        assert max(abs(other[c] - ref[c]) for c in ref) < 1e-4
    # the crop is what the model saw: the whole-image path on the cropped pixels gives the same numbers
    model = load_run(crop_run)
    x0, y0, x1, y1 = box
    crop = np.ascontiguousarray(read_image(xray_file)[y0:y1, x0:x1])
    with torch.inference_mode():
        plain = probabilities(model(preprocess(crop, build_transform(224, model.spec.mean, model.spec.std))[None])).numpy()[0]
    assert max(abs(plain[i] - ref[c]) for i, c in enumerate(model.classes)) < 1e-6


def test_feature_cache_uses_the_predictor_region(crop_run, xray_file, tmp_path):
    """Cached features (training, cv, compare) and the predictor see the same region; entries are keyed by it."""
    import pandas as pd

    from cxrdx.inference.predictor import Predictor
    from cxrdx.models.outputs import predict_proba
    from cxrdx.models.run import load_run

    model = load_run(crop_run)
    manifest = pd.DataFrame({"image": [str(xray_file)], "target": [0]})
    fs = extract_features(model, manifest, tmp_path, progress=False)
    full = extract_features(model, manifest, tmp_path, roi=RegionOfInterest(RoiSetting()), progress=False)
    dirs = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len(dirs) == 2 and any(d.endswith(RoiSetting.from_model_info(model.info).key) for d in dirs)
    assert not np.allclose(fs.features, full.features)
    cached = predict_proba(model.head, fs.tensor(), num_classes=3)[0]
    direct = Predictor(model).predict_paths([xray_file])[0]
    assert max(abs(cached[i] - direct.probabilities[c]) for i, c in enumerate(model.classes)) < 2e-3  # fp16 cache


def test_no_lungs_falls_back_to_full_image_with_a_flag(crop_run, tmp_path):
    from fastapi.testclient import TestClient

    from cxrdx.inference.output import write_predictions
    from cxrdx.inference.runtimes import create_predictor

    blank = png_bytes(np.full((120, 100), 128, np.uint8))
    for runtime in ("torch", "onnx"):
        pred = create_predictor(crop_run, runtime).predict_sources([("blank.png", blank)])[0]
        assert pred.ok and pred.roi_fallback and pred.roi.applied == "full" and pred.roi.box == (0, 0, 100, 120)
        assert "no lungs" in pred.roi.reason
    write_predictions([pred], ["covid", "pneumonia", "normal"], tmp_path / "p.csv")
    header, row = (tmp_path / "p.csv").read_text().splitlines()
    assert header.endswith("error,roi,roi_fallback") and row.endswith(",full,true")
    with TestClient(make_app(crop_run, tmp_path)) as client:
        served = client.post("/v1/predict", files={"file": ("blank.png", blank, "image/png")})
    assert served.status_code == 200 and served.json()["roi_fallback"] is True


def test_lung_mask_greys_out_everything_outside_the_lungs(seg_dir):
    roi = RegionOfInterest(RoiSetting("lung_mask", "equalize", margin=0.0, lung_model=str(seg_dir)).resolved())
    grey = make_xray((200, 240), seed=1)
    region, info = roi(grey)
    x0, y0, x1, y1 = info.box
    assert region.shape == (y1 - y0, x1 - x0) and not info.fallback
    outside = ~info.mask[y0:y1, x0:x1]
    assert outside.any() and (region[outside] == 128).all()


def test_explain_heatmap_in_the_original_frame(crop_run, xray_file):
    from cxrdx.explain.cam import Explainer
    from cxrdx.models.run import load_run

    exp = Explainer(load_run(crop_run))(xray_file)
    h, w = exp.image.shape
    assert exp.heatmap.shape == (h, w) and exp.overlay.size[0] == w and exp.overlay.size[1] >= h  # + caption band
    x0, y0, x1, y1 = exp.roi.box
    inside = np.zeros((h, w), bool)
    inside[y0:y1, x0:x1] = True
    assert exp.heatmap[~inside].max() == 0 and exp.heatmap[inside].max() > 0
    assert exp.to_dict()["roi"]["box"] == [x0, y0, x1, y1]


def test_blackout_control_with_a_segmenter_blacks_out_its_lungs_and_has_its_own_cache_entry(seg_dir, tmp_path):
    import pandas as pd

    from cxrdx.evaluation.compare import _control_maps, _lung_finder

    grey = make_xray((200, 240), seed=1)
    path = tmp_path / "x.png"
    Image.fromarray(grey).save(path)
    cfg = load_config(overrides=[f"data.lung_model={seg_dir}", f"data.cache_dir={tmp_path / 'cache'}", f"data.root={tmp_path}"])
    finder = _lung_finder(cfg)
    mask = finder(grey)
    assert mask is not None and 0.05 < mask.mean() < 0.9
    manifest = pd.DataFrame({"image": [str(path)], "target": [0], "patient_id": ["p"]})
    maps = _control_maps(cfg, manifest, "tf_efficientnet_lite0", "lungs_blacked_out", progress=False)
    assert maps.shape[0] == 1
    names = [p.name for p in (tmp_path / "cache" / "features").iterdir()]
    assert any(f"nolung-v1-seg{finder.digest[7:19]}" in n for n in names), names
    masked = load_config(overrides=[f"data.lung_model={seg_dir}", "data.roi=lung_mask"])  # no second segmenter
    assert _lung_finder(masked).roi is RegionOfInterest.from_config(masked.data)
