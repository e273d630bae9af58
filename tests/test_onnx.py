"""ONNX export: the whole model (backbone + head + softmax) gives PyTorch's probabilities within 1e-4."""

from __future__ import annotations

import csv
import io
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cxrdx.cli import app as cli_app
from cxrdx.inference.predictor import Predictor
from cxrdx.models.heads import HEADS
from cxrdx.inference.onnx_export import export_model
from cxrdx.inference.onnx_runtime import OnnxModelError, OnnxPredictor
from test_serve_support import cxr3_images, make_run

TOL = 1e-4


def _probs(predictor, paths) -> np.ndarray:
    results = predictor.predict_paths(paths)
    assert all(r.ok for r in results)
    return np.array([[r.probabilities[c] for c in predictor.classes] for r in results])


def _compare(model, paths, tmp_path) -> tuple[np.ndarray, np.ndarray]:
    path = export_model(model, tmp_path / "m.onnx")
    # batch size 4 over 6 images: batches of 4 and 2 exercise the dynamic batch axis
    ours = _probs(OnnxPredictor(path, batch_size=4), paths)
    ref = _probs(Predictor(model, batch_size=4), paths)
    return ours, ref


@pytest.fixture(scope="module")
def six_images(cxr3_root):
    return cxr3_images(cxr3_root, 6)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_random_model_onnx_matches_torch(head, six_images, tmp_path):
    from cxrdx.models.factory import create_model

    torch.manual_seed(1)
    model = create_model("tf_efficientnet_lite0", head, weights="none").eval()
    ours, ref = _compare(model, six_images, tmp_path)
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(ours.sum(1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def slice_features(cxr3_slice, feature_cache_dir):
    from cxrdx.features.cache import extract_features
    from cxrdx.models.factory import create_model

    model = create_model("tf_efficientnet_lite0", "pool", weights="imagenet")
    fs = extract_features(model, cxr3_slice, feature_cache_dir, progress=False)
    return fs


@pytest.mark.slow  # trains six heads: ~1 min on an idle 2-core machine, more under load
@pytest.mark.parametrize("head", sorted(HEADS))
def test_trained_model_onnx_matches_torch(head, slice_features, six_images, tmp_path):
    from cxrdx.config import TrainConfig
    from cxrdx.models.factory import create_model
    from cxrdx.training.head_trainer import train_head

    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", head, weights="imagenet")
    # a few epochs on 96 cached feature maps: enough for confident, image-dependent outputs
    idx = np.random.default_rng(0).permutation(len(slice_features.features))[:96]
    tr, va = idx[:64], idx[64:]
    y = slice_features.targets()
    train_head(model.head, slice_features.tensor(tr), y[tr], slice_features.tensor(va), y[va],
               TrainConfig(epochs=4, patience=4, batch_size=32, lr=3e-3), num_classes=3, progress=False)
    model.eval()
    ours, ref = _compare(model, six_images, tmp_path)
    # a trained head gives confident, image-dependent answers: the comparison is not between two uniform vectors
    assert ref.max() > 0.5 and np.ptp(ref[:, 0]) > 0.05
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def _csv_probs(text: str) -> dict[str, list[float]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    return {r["file"]: [float(r[k]) if r[k] else float("nan") for k in ("p_covid", "p_pneumonia", "p_normal")]
            for r in rows}


def test_cli_export_then_predict_with_onnx_runtime(cxr3_root, tmp_path):
    run = make_run(tmp_path / "run", export=False)
    runner = CliRunner()
    res = runner.invoke(cli_app, ["export", "--onnx", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "model.onnx").is_file() and "max |ONNX Runtime - PyTorch|" in res.output
    images = cxr3_images(cxr3_root, 3)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    args = ["predict", *map(str, images), str(bad), "--model", str(run)]
    onnx_out = runner.invoke(cli_app, [*args, "--runtime", "onnx"])
    torch_out = runner.invoke(cli_app, args)
    assert onnx_out.exit_code == 0 and torch_out.exit_code == 0, onnx_out.output + torch_out.output
    o, t = _csv_probs(onnx_out.stdout), _csv_probs(torch_out.stdout)
    assert set(o) == {*map(str, images), str(bad)}
    for img in map(str, images):
        np.testing.assert_allclose(o[img], t[img], atol=TOL)
    assert np.isnan(o[str(bad)]).all()  # the broken file is reported, not fatal


def test_missing_or_stale_onnx_is_refused_with_a_clear_message(tmp_path):
    from cxrdx.models.factory import create_model
    from cxrdx.models.run import save_run

    run = make_run(tmp_path / "run", head="pool", export=False)
    with pytest.raises(OnnxModelError, match="cxrdx export --onnx"):
        OnnxPredictor.from_run_dir(run)
    res = CliRunner().invoke(cli_app, ["predict", str(tmp_path), "--model", str(run), "--runtime", "onnx"])
    assert res.exit_code == 2 and "cxrdx export --onnx" in res.output
    make_run(run, head="pool")  # export
    OnnxPredictor.from_run_dir(run)
    torch.manual_seed(123)  # retrain (new weights) without re-exporting
    save_run(create_model("tf_efficientnet_lite0", "pool", weights="imagenet"), run)
    with pytest.raises(OnnxModelError, match="again"):
        OnnxPredictor.from_run_dir(run)
    other = tmp_path / "copy.onnx"
    shutil.copy(run / "model.onnx", other)
    assert OnnxPredictor(other).classes == ["covid", "pneumonia", "normal"]


@pytest.mark.parametrize("size", [224, 227, 320])
def test_frozen_same_padding_is_exact_and_static(size):
    """TF-"SAME" padding fixed for one input size gives the dynamic model's output, for even and odd sizes."""
    from cxrdx.models.factory import create_model
    from cxrdx.models.static_padding import StaticPadConv2d, freeze_same_padding

    torch.manual_seed(2)
    model = create_model("tf_efficientnet_lite0", "pool", weights="none").eval()
    frozen = freeze_same_padding(model, size)
    kinds = {type(m).__name__ for m in frozen.modules()}
    assert "Conv2dSame" not in kinds and "StaticPadConv2d" in kinds
    assert "Conv2dSame" in {type(m).__name__ for m in model.modules()}  # the original is untouched
    pads = [m.pads for m in frozen.modules() if isinstance(m, StaticPadConv2d)]
    assert any(p[0] != p[1] for p in pads)  # TF pads asymmetrically: more on the right/bottom
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), model(x), atol=1e-6, rtol=0)


def test_export_folds_same_padding_into_the_convolutions(tmp_path):
    """The default backbone's exported graph has no Pad and no shape arithmetic in front of its convolutions."""
    import onnx

    from cxrdx.models.factory import create_model

    torch.manual_seed(3)
    model = create_model("tf_efficientnet_lite0", "bilstm", weights="none").eval()
    graph = onnx.load(str(export_model(model, tmp_path / "m.onnx"))).graph
    ops = [n.op_type for n in graph.node]
    assert "Pad" not in ops and "Ceil" not in ops
    asymmetric = [n for n in graph.node if n.op_type == "Conv"
                  for a in n.attribute if a.name == "pads" and list(a.ints[:2]) != list(a.ints[2:])]
    assert len(asymmetric) == 5  # the five stride-2 TF-"SAME" convolutions
    used = {i for n in graph.node for i in n.input}
    assert all(init.name in used for init in graph.initializer)
