"""Predictor batching: bad files in a batch keep their place and never stop the good ones, with or without read-ahead."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_xray
from cxrdx.inference.predictor import Predictor


class ReadAheadPredictor(Predictor):
    read_ahead = True


@pytest.fixture(scope="module")
def model():
    from cxrdx.models.factory import create_model

    torch.manual_seed(0)
    return create_model("tf_efficientnet_lite0", "pool", weights="none").eval()


def _files(tmp_path):
    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.png"
        Image.fromarray(make_xray(seed=i)).save(p)
        if i == 1:
            p.write_bytes(p.read_bytes()[:2000])  # a truncated PNG
        elif i == 4:
            p.write_text("not an image")
        paths.append(p)
    return paths


@pytest.mark.parametrize("cls", [Predictor, ReadAheadPredictor])
@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_results_in_order_with_errors_in_place(cls, batch_size, model, tmp_path):
    paths = _files(tmp_path)
    results = cls(model, batch_size=batch_size).predict_paths(paths)
    assert [r.source for r in results] == [str(p) for p in paths]
    assert [r.ok for r in results] == [True, False, True, True, False, True, True]
    assert (results[1].error.code, results[4].error.code) == ("corrupt_image", "not_an_image")
    good = [r for r in results if r.ok]
    assert all(abs(sum(r.probabilities.values()) - 1) < 1e-5 for r in good)
    # the same image gives the same probabilities whatever the batching and threading
    alone = Predictor(model, batch_size=1).predict_paths([paths[5]])[0]
    assert np.allclose(list(results[5].probabilities.values()), list(alone.probabilities.values()), atol=1e-5)


def test_empty_input_gives_no_results(model):
    assert ReadAheadPredictor(model).predict_paths([]) == []


def test_write_predictions_csv_json_and_stream(tmp_path):
    import csv
    import io
    import json

    from cxrdx.data.io import ImageReadError
    from cxrdx.inference.output import write_predictions
    from cxrdx.inference.predictor import Prediction

    classes = ["covid", "normal"]
    results = [
        Prediction("a.png", {"covid": 0.25, "normal": 0.75}, "normal"),
        Prediction("b.png", error=ImageReadError("truncated", source="b.png")),
    ]
    stream = io.StringIO()
    write_predictions(results, classes, None, stream=stream)
    rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
    assert list(rows[0]) == ["file", "predicted", "p_covid", "p_normal", "error"]
    assert rows[0] == {"file": "a.png", "predicted": "normal", "p_covid": "0.250000", "p_normal": "0.750000", "error": ""}
    assert rows[1]["p_covid"] == "" and rows[1]["error"] == "unreadable: b.png: truncated"
    write_predictions(results, classes, tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_bytes().decode() == stream.getvalue()
    write_predictions(results, classes, tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text()) == [r.to_dict() for r in results]


def test_runtimes_registry_and_unknown_runtime(model, tmp_path):
    from cxrdx.inference.runtimes import RUNTIMES, create_predictor
    from cxrdx.registry import UnknownNameError, get_registry

    assert get_registry("runtimes") is RUNTIMES
    assert RUNTIMES.names() == ["torch", "onnx", "onnx-int8", "torch-bf16", "torch-cuda"]
    with pytest.raises(UnknownNameError, match="unknown runtime 'tensorrt'; choose one of: torch, onnx"):
        create_predictor(tmp_path, "tensorrt")
    assert create_predictor(tmp_path, "torch", model=model).model is model


def test_torch_cuda_runtime_is_refused_in_one_line_without_a_gpu(model, tmp_path, monkeypatch):
    from cxrdx.config import ConfigError
    from cxrdx.inference.runtimes import create_predictor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="torch-cuda needs a CUDA GPU and none is visible"):
        create_predictor(tmp_path, "torch-cuda", model=model)


def test_predictor_runs_where_the_model_lives_and_answers_on_the_cpu(model, tmp_path):
    """Batches move to the model's device and probabilities come back as CPU numpy (a GPU model works the same)."""
    pred = Predictor(model)
    assert pred.device == torch.device("cpu")
    probs = pred.probabilities(torch.zeros(2, 3, 224, 224, dtype=torch.float32))
    assert isinstance(probs, np.ndarray) and probs.shape == (2, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
