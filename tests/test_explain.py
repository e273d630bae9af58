"""Grad-CAM explanations: shape / range, files, DICOM input, CLI, and a synthetic check that the CAM finds the evidence."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cxrdx.config import TrainConfig
from cxrdx.data.transforms import build_transform, preprocess
from cxrdx.explain import Explainer, Explanation, explain
from cxrdx.models import create_model
from cxrdx.registry import UnknownNameError
from cxrdx.training.head_trainer import train_head

from conftest import dicom_bytes, make_xray


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tf_efficientnet_lite0", "bilstm", weights="imagenet").eval()


def _assert_heatmap(exp: Explanation, shape: tuple[int, int]) -> None:
    assert exp.heatmap.shape == shape and exp.heatmap.dtype == np.float32
    assert exp.heatmap.min() >= 0.0 and exp.heatmap.max() <= 1.0
    assert exp.heatmap.max() > 0.5  # normalised: the peak is near 1, not an empty map
    assert exp.image.shape == shape and exp.image.dtype == np.uint8


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_heatmap_has_the_image_size_and_values_in_0_1(model, method):
    grey = make_xray((256, 300), seed=1)
    exp = explain(model, grey, method=method)
    _assert_heatmap(exp, (256, 300))
    assert exp.method == method and exp.predicted in model.classes and exp.target == exp.predicted
    assert sum(exp.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert exp.overlay.mode == "RGB" and exp.overlay.width == 300 and exp.overlay.height > 256  # caption strip


@pytest.mark.slow
def test_scorecam_runs():
    # Score-CAM runs one forward pass per backbone channel (1280): at 64x64 input that stays quick.
    small = create_model("tf_efficientnet_lite0", "gru", weights="imagenet", image_size=64).eval()
    exp = explain(small, make_xray((96, 128), seed=2), method="scorecam")
    _assert_heatmap(exp, (96, 128))


def test_real_cxr3_image_overlay_and_heatmap_files(model, cxr3_root, tmp_path):
    path = sorted((cxr3_root / "images" / "covid").glob("*.png"))[0]
    exp = explain(model, path)
    h, w = np.asarray(Image.open(path)).shape
    _assert_heatmap(exp, (h, w))
    files = exp.save(tmp_path, "case")
    assert files["overlay"] == tmp_path / "case_overlay.png" and files["heatmap"] == tmp_path / "case_heatmap.npy"
    png = Image.open(files["overlay"])
    assert png.format == "PNG" and png.mode == "RGB" and png.width == w
    np.testing.assert_array_equal(np.load(files["heatmap"]), exp.heatmap)
    assert json.loads(json.dumps(exp.to_dict()))["files"]["overlay"].endswith("case_overlay.png")
    # the same file as bytes gives the same explanation
    again = explain(model, path.read_bytes())
    np.testing.assert_allclose(again.heatmap, exp.heatmap, atol=1e-5)


def test_target_class_and_errors(model):
    grey = make_xray((128, 128), seed=3)
    by_name = explain(model, grey, target_class="normal")
    by_index = explain(model, grey, target_class=2)
    assert by_name.target == by_index.target == "normal"
    np.testing.assert_allclose(by_name.heatmap, by_index.heatmap, atol=1e-6)
    with pytest.raises(ValueError, match="unknown class"):
        explain(model, grey, target_class="flu")
    with pytest.raises(UnknownNameError, match="unknown cam-method 'guesscam'; choose one of: gradcam, gradcam"):
        explain(model, grey, method="guesscam")
    with pytest.raises(ValueError, match="8-bit"):
        explain(model, grey.astype(np.float32))


def test_unreadable_input_is_a_typed_error(model):
    from cxrdx.data.io import ImageReadError

    with pytest.raises(ImageReadError):
        explain(model, b"definitely not an image")


def test_dicom_input(model, tmp_path):
    data = dicom_bytes(make_xray((180, 150), seed=4))  # 12-bit data
    path = tmp_path / "chest.dcm"
    path.write_bytes(data)
    from_file = explain(model, path)
    _assert_heatmap(from_file, (180, 150))
    from_bytes = explain(model, data)
    np.testing.assert_allclose(from_bytes.heatmap, from_file.heatmap, atol=1e-5)
    from_file.save(tmp_path / "out", "chest")
    assert (tmp_path / "out" / "chest_overlay.png").is_file()


def test_import_cxrdx_and_the_cam_method_registry_stay_light():
    code = (
        "import sys, cxrdx; assert 'torch' not in sys.modules, 'import cxrdx pulled in torch'; "
        "from cxrdx.registry import get_registry; names = get_registry('cam-methods').names(); "
        "assert names == ['gradcam', 'gradcam++', 'scorecam'], names; "
        "assert 'torch' not in sys.modules, 'the cam-methods registry pulled in torch'; "
        "from cxrdx.explain import Explainer; assert callable(Explainer); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _blob_image(seed: int, corner: int | None, size: int = 224) -> np.ndarray:
    """A synthetic X-ray; with ``corner`` in 0..3 a bright blob sits at that quadrant's centre."""
    img = make_xray((size, size), seed=seed).astype(np.float32)
    if corner is not None:
        cy, cx = BLOB_CENTRES[corner]
        yy, xx = np.mgrid[0:size, 0:size]
        img += 140.0 * np.exp(-(((yy - cy * size) ** 2 + (xx - cx * size) ** 2) / (2 * (0.05 * size) ** 2)))
    return np.clip(img, 0, 255).astype(np.uint8)


BLOB_CENTRES = [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)]


@pytest.mark.slow
def test_cam_peaks_on_the_blob_that_decides_the_class():
    """Class 'blob' = a bright blob in one of four known places, 'clear' = none.

    A bidirectional-LSTM head trained on frozen features must then be explained by
    a CAM whose peak lies on the blob: Grad-CAM is wired to the backbone's last
    stage and its gradient flows back through the RNN.
    """
    torch.manual_seed(0)
    blob_model = create_model("tf_efficientnet_lite0", "bilstm", weights="imagenet", classes=["blob", "clear"]).eval()
    rng = np.random.default_rng(0)
    n = 160
    corners = [int(rng.integers(0, 4)) if i % 2 == 0 else None for i in range(n)]
    images = [_blob_image(1000 + i, c) for i, c in enumerate(corners)]
    labels = np.array([0 if c is not None else 1 for c in corners])
    transform = build_transform(224, blob_model.spec.mean, blob_model.spec.std)
    with torch.inference_mode():
        feats = torch.cat([
            blob_model.forward_features(torch.stack([preprocess(g, transform) for g in images[i : i + 32]]))
            for i in range(0, n, 32)
        ])
    train, val = slice(0, 120), slice(120, n)
    cfg = TrainConfig(epochs=30, batch_size=32, lr=2e-3, patience=30, seed=0)
    result = train_head(blob_model.head, feats[train].clone(), labels[train], feats[val].clone(), labels[val], cfg, 2, progress=False)
    assert result.best_val_f1 > 0.9, result

    hits, tried = 0, 0
    for i in range(120, n):
        if corners[i] is None:
            continue
        exp = explain(blob_model, images[i], target_class="blob")
        cy, cx = BLOB_CENTRES[corners[i]]
        r, c = exp.peak
        tried += 1
        hits += np.hypot(r - cy * 224, c - cx * 224) <= 0.15 * 224
    assert tried >= 15
    assert hits / tried >= 0.8, f"CAM peak on the blob for only {hits}/{tried} images"


def test_cli_explain_images_and_score(model, tmp_path, cxr3_root):
    from typer.testing import CliRunner

    from cxrdx.cli import app
    from cxrdx.models.run import save_run

    run = tmp_path / "run"
    save_run(model, run)
    good = sorted((cxr3_root / "images" / "pneumonia").glob("*.png"))[0]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["explain", str(good), str(bad), "--model", str(run), "--out", str(out), "--method", "gradcam++"])
    assert result.exit_code == 0, result.output
    assert (out / f"{good.stem}_overlay.png").is_file() and (out / f"{good.stem}_heatmap.npy").is_file()
    assert not (out / "broken_overlay.png").exists()
    assert "1 explained, 1 skipped" in result.output
    records = json.loads((out / "explanations.json").read_text())
    assert len(records) == 1 and records[0]["method"] == "gradcam++"

    bad_method = CliRunner().invoke(app, ["explain", str(good), "--model", str(run), "--method", "nope"])
    assert bad_method.exit_code == 2 and "unknown cam-method 'nope'" in bad_method.output
    neither = CliRunner().invoke(app, ["explain", "--model", str(run)])
    assert neither.exit_code == 2


def test_explainer_is_configured_once_and_called_per_image(model):
    grey = make_xray((140, 120), seed=6)
    explainer = Explainer(model, method="gradcam++")
    exp = explainer(grey, target="covid")
    assert exp.method == "gradcam++" and exp.target == "covid"
    np.testing.assert_allclose(exp.heatmap, explain(model, grey, method="gradcam++", target_class="covid").heatmap, atol=1e-6)
    assert explainer(grey).target == explainer(grey).predicted
    with pytest.raises(UnknownNameError):
        Explainer(model, method="guesscam")


def test_explain_works_inside_inference_mode(model):
    grey = make_xray((120, 140), seed=5)
    expected = explain(model, grey).heatmap
    with torch.inference_mode():
        inside = explain(model, grey).heatmap
    np.testing.assert_allclose(inside, expected, atol=1e-5)


def test_cli_explain_takes_every_read_limit_from_the_config(model, tmp_path):
    """``data.max_aspect_ratio`` (not only max_pixels / max_file_bytes) reaches the CLI's reads."""
    from typer.testing import CliRunner

    from cxrdx.cli import app
    from cxrdx.models.run import save_run

    run = tmp_path / "run"
    save_run(model, run)
    wide = tmp_path / "wide.png"
    Image.fromarray(make_xray((150, 300), seed=3)).save(wide)  # 2:1
    out = tmp_path / "out"
    args = ["explain", str(wide), "--model", str(run), "--out", str(out)]
    assert "1 explained, 0 skipped" in CliRunner().invoke(app, args).output
    refused = CliRunner().invoke(app, [*args, "--set", "data.max_aspect_ratio=1.5"])
    assert "aspect ratio 2:1 exceeds the limit of 1.5:1" in refused.output and "0 explained, 1 skipped" in refused.output
