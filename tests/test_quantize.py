"""int8 (static QDQ) and bf16 runtimes: made from a run folder, selectable by name, close to fp32 on real images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrdx.cli import app as cli_app
from cxrdx.inference.onnx_runtime import OnnxModelError
from cxrdx.inference.runtimes import RUNTIMES, create_predictor
from test_serve_support import cxr3_images, make_run


def _probs(predictor, paths) -> np.ndarray:
    results = predictor.predict_paths(paths)
    assert all(r.ok for r in results)
    return np.array([[r.probabilities[c] for c in predictor.classes] for r in results])


def test_new_runtimes_are_registered():
    assert {"torch", "onnx", "onnx-int8", "torch-bf16"} <= set(RUNTIMES.names())


def test_missing_int8_file_is_refused_with_the_command_to_make_it(tmp_path):
    run = make_run(tmp_path / "run", export=False)
    with pytest.raises(OnnxModelError, match="--quantize int8"):
        create_predictor(run, "onnx-int8", guard=False)


@pytest.mark.slow
def test_export_quantize_int8_then_predict_by_runtime_name(cxr3_root, tmp_path):
    run = make_run(tmp_path / "run", export=False)
    images = cxr3_images(cxr3_root, 24)
    pd.DataFrame({"image": [str(p) for p in images], "part": ["train"] * 16 + ["val"] * 8}).to_csv(run / "split.csv", index=False)
    res = CliRunner().invoke(cli_app, ["export", "--onnx", str(run), "--quantize", "int8", "--calibration-images", "16"])
    assert res.exit_code == 0, res.output
    assert (run / "model.int8.onnx").is_file() and "calibrated on 16 training images" in res.output

    int8 = create_predictor(run, "onnx-int8", guard=False)
    info = int8.meta["quantization"]
    assert info["calibration"]["images"] == 16 and info["calibration"]["part"] == "train"
    assert info["check_vs_fp32_on_val"]["images"] == 8
    test = images[16:]
    p8, p32 = _probs(int8, test), _probs(create_predictor(run, "onnx", guard=False), test)
    np.testing.assert_allclose(p8.sum(1), 1.0, atol=1e-5)
    # approximate, not exact: close to fp32 (a seed-0 head gives near-uniform probabilities, so no class-agreement bar here)
    assert np.abs(p8 - p32).max() < 0.1


def test_torch_bf16_runtime_agrees_with_fp32(cxr3_root, tmp_path):
    run = make_run(tmp_path / "run", export=False)
    images = cxr3_images(cxr3_root, 4)
    bf16, fp32 = create_predictor(run, "torch-bf16", guard=False), create_predictor(run, "torch", guard=False)
    pb, pf = _probs(bf16, images), _probs(fp32, images)
    assert np.abs(pb - pf).max() < 0.05
    assert next(fp32.model.parameters()).is_contiguous()  # the caller's model keeps its layout
