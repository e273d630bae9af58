"""Feature cache, a real short training run, checkpoints and the predict CLI, on real cxr3 images."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrdx.cli import app
from cxrdx.config import load_config
from cxrdx.features.cache import extract_features
from cxrdx.models import create_model
from cxrdx.models.run import load_run
from cxrdx.training.pipeline import run_training


def test_feature_cache_is_hit_on_second_run(cxr3_slice, feature_cache_dir):
    model = create_model("tf_efficientnet_lite0", "pool", weights="imagenet")
    rows = cxr3_slice.iloc[:12]
    first = extract_features(model, rows, feature_cache_dir, progress=False)
    second = extract_features(model, rows, feature_cache_dir, progress=False)
    assert second.misses == 0 and second.hits == 12
    assert first.features.shape == (12, 1280, 7, 7)
    np.testing.assert_array_equal(first.features, second.features)
    other = extract_features(model, rows.iloc[:3], feature_cache_dir, variant="other", progress=False)
    assert other.misses == 3  # a different variant is a different cache key


@pytest.fixture(scope="module")
def trained_run(cxr3_slice, feature_cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    csv = out / "slice.csv"
    cxr3_slice.drop(columns=["target"]).to_csv(csv, index=False)
    cfg = load_config(overrides=[
        f"data.manifest={csv}", f"data.root={out}", f"data.cache_dir={feature_cache_dir}", f"out_dir={out}",
        "model.head=gru", "train.epochs=30", "train.patience=10",
    ])
    return run_training(cfg, progress=False)


@pytest.mark.slow
def test_short_real_training_beats_chance_on_held_out_patients(trained_run):
    m = trained_run.metrics
    sizes = trained_run.split_sizes
    assert not set(pd.read_csv(trained_run.run_dir / "split.csv").query("part == 'test'")["patient_id"]) & set(
        pd.read_csv(trained_run.run_dir / "split.csv").query("part == 'train'")["patient_id"]
    )
    assert sizes["test"]["images"] >= 30
    assert m["accuracy"] > 0.5  # chance is ~1/3 on three balanced classes
    assert m["macro"]["auc"] > 0.7
    saved = json.loads((trained_run.run_dir / "metrics.json").read_text())
    assert saved["test"]["accuracy"] == pytest.approx(m["accuracy"])
    for cls in ("covid", "pneumonia", "normal"):
        assert 0 <= saved["test"]["per_class"][cls]["specificity"] <= 1


@pytest.mark.slow
def test_checkpoint_round_trip_gives_identical_probabilities(trained_run, cxr3_slice):
    import torch

    reloaded = load_run(trained_run.run_dir)
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(reloaded.predict_proba(x), trained_run.model.predict_proba(x))


@pytest.mark.slow
def test_predict_cli_sums_to_one_and_survives_a_corrupt_file(trained_run, cxr3_slice, tmp_path):
    good = cxr3_slice["image"].iloc[0]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(open(good, "rb").read()[:200])
    text = tmp_path / "notes.txt"
    text.write_text("not an x-ray")
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(app, ["predict", good, str(corrupt), str(text), "--model", str(trained_run.run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out)
    assert len(df) == 3
    ok = df[df["error"].isna()]
    assert len(ok) == 1
    assert ok[["p_covid", "p_pneumonia", "p_normal"]].sum(axis=1).iloc[0] == pytest.approx(1.0, abs=1e-5)
    errors = df["error"].dropna().tolist()
    assert any(e.startswith("corrupt_image") for e in errors)
    assert any(e.startswith("not_an_image") for e in errors)


@pytest.mark.slow
def test_evaluate_cli_writes_metrics(trained_run, tmp_path):
    out = tmp_path / "m.json"
    result = CliRunner().invoke(app, ["evaluate", str(trained_run.run_dir), "--json", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["accuracy"] == pytest.approx(trained_run.metrics["accuracy"], abs=1e-6)
    assert "Confusion matrix" in result.output and "stability" not in metrics

    stable = CliRunner().invoke(app, ["evaluate", str(trained_run.run_dir), "--json", str(out), "--stability"])
    assert stable.exit_code == 0, stable.output
    report = json.loads(out.read_text())["stability"]
    n = report["images"]
    assert report["runtime"] == "torch" and n == trained_run.split_sizes["test"]["images"]
    for name in ("jpeg95", "noise1"):
        row = report["perturbations"][name]
        assert row["images"] == n and 0.5 <= row["class_agreement"] <= 1.0
    assert "Prediction stability" in stable.output
    kept = json.loads((trained_run.run_dir / "stability.json").read_text())  # beside the run, for `cxrdx report`
    assert kept["part"] == "test" and kept["perturbations"]["noise1"]["flips"] == report["perturbations"]["noise1"]["flips"]


def test_cli_reports_missing_model_without_traceback(tmp_path):
    result = CliRunner().invoke(app, ["predict", str(tmp_path), "--model", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "not a cxrdx model folder" in result.output
