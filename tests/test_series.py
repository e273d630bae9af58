"""Longitudinal series model: masking, order sensitivity, exam ordering, CIs and the `cxrdx series` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxrdx.config import SeriesConfig
from cxrdx.series import LastExamBaseline, MeanPoolBaseline, SeriesRNN, build_series, pad, time_features
from cxrdx.series.cv import _binary_metrics, _resampled_metrics, bootstrap_metrics, fit, positive_probability


@pytest.mark.parametrize("make", [
    lambda d: SeriesRNN(d, rnn="gru"), lambda d: SeriesRNN(d, rnn="lstm"),
    lambda d: MeanPoolBaseline(d), lambda d: LastExamBaseline(d),
], ids=["gru", "lstm", "mean_pool", "last_exam"])
def test_padded_batch_gives_the_same_output_as_each_sequence_alone(make):
    torch.manual_seed(0)
    model = make(6).eval()
    seqs = [torch.randn(n, 6) for n in (1, 4, 2, 7)]
    x, lengths = pad([s.numpy() for s in seqs])
    x_extra = torch.cat([x, torch.full((len(seqs), 3, 6), 99.0)], dim=1)  # more padding, and garbage in it
    x_extra[0, 1:] = -50.0
    with torch.no_grad():
        batched = model(x, lengths)
        garbage = model(x_extra, lengths)
        alone = torch.cat([model(s[None], torch.tensor([len(s)])) for s in seqs])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(garbage, alone, atol=1e-5, rtol=1e-5)


def _order_task(n_pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Each sequence holds one bright and one dark exam among 0-2 neutral ones; label = bright comes first.

    Every sequence appears with its exams in reverse order too (opposite label), so any
    order-blind model sees identical inputs for the two labels.
    """
    rng = np.random.default_rng(seed)
    dim, seqs, labels = 4, [], []
    for _ in range(n_pairs):
        steps = [rng.normal(0, 0.3, dim) for _ in range(int(rng.integers(0, 3)))]
        bright, dark = rng.normal(0, 0.3, dim) + 2.0, rng.normal(0, 0.3, dim) - 2.0
        i, j = sorted(rng.choice(len(steps) + 2, size=2, replace=False))
        seq = np.array(steps[:i] + [bright] + steps[i:])
        seq = np.insert(seq, j, dark, axis=0) if len(seq) else np.array([bright, dark])
        for s, y in ((seq, 1), (seq[::-1].copy(), 0)):
            seqs.append(s.astype(np.float32))
            labels.append(y)
    x, lengths = pad(seqs)
    return x, lengths, np.array(labels)


def test_rnn_learns_exam_order_and_mean_pool_cannot():
    cfg = SeriesConfig(epochs=300, lr=1e-2, weight_decay=0.0, dropout=0.0, hidden=16)
    x_tr, len_tr, y_tr = _order_task(60, seed=1)
    x_te, len_te, y_te = _order_task(40, seed=2)
    accuracy = {}
    for name, model in (("rnn", SeriesRNN(4, hidden=16, dropout=0.0)), ("mean_pool", MeanPoolBaseline(4, hidden=16, dropout=0.0))):
        torch.manual_seed(0)
        fit(model, x_tr, len_tr, y_tr, cfg)
        accuracy[name] = float(((positive_probability(model, x_te, len_te) >= 0.5) == y_te).mean())
    assert accuracy["rnn"] >= 0.9, accuracy
    assert accuracy["mean_pool"] <= 0.55, accuracy  # order-blind: each reversed pair gets one right


def test_exams_are_ordered_by_offset_days_with_unknown_dates_last():
    manifest = pd.DataFrame({
        "patient_id": ["a", "a", "a", "b", "a"],
        "offset_days": [10.0, 2.0, np.nan, 0.0, 5.0],
        "label": ["covid", "covid", "covid", "pneumonia", "pneumonia"],
        "survival": ["N", None, None, "Y", None],
        "image": ["a10", "a2", "a?", "b0", "a5"],
    })
    emb = np.arange(5, dtype=np.float32)[:, None].repeat(3, axis=1)  # row index as the embedding
    series = build_series(manifest, emb, target="survival")
    assert series.patient_ids == ["a", "b"]
    assert series.embeddings[0][:, 0].tolist() == [1, 4, 0, 2]  # offsets 2, 5, 10, unknown
    assert series.labels.tolist() == [1, 0]  # a died, b survived
    np.testing.assert_allclose(series.times[0][:, 0], np.log1p([0, 3, 5, 0]), rtol=1e-6)
    np.testing.assert_allclose(series.times[0][:, 2], [0, 0, 0, 1])
    diagnosis = build_series(manifest, emb, target="diagnosis")
    assert diagnosis.labels.tolist() == [1, 0]  # a's last dated exam (day 10) is covid


def test_time_features_of_an_all_unknown_sequence_are_flags_only():
    out = time_features(np.array([np.nan, np.nan]))
    np.testing.assert_array_equal(out, [[0, 0, 1], [0, 0, 1]])


def test_bootstrap_auc_matches_sklearn_and_ci_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.clip(y * 0.3 + rng.random(60) * 0.7, 0, 1).round(2)  # ties on purpose
    draws = rng.integers(0, 60, size=(50, 60))
    fast = _resampled_metrics(y, p, draws)[:, 0]
    slow = [roc_auc_score(y[d], p[d]) if len(np.unique(y[d])) == 2 else np.nan for d in draws]
    np.testing.assert_allclose(fast, slow)
    res = bootstrap_metrics(y, {"rnn": p, "last_exam": 1 - p}, n_boot=500)
    auc = res["rnn"]["auc"]
    assert auc["value"] == pytest.approx(_binary_metrics(y, p)["auc"])
    assert auc["ci"][0] <= auc["value"] <= auc["ci"][1]
    assert res["rnn"]["auc_minus_last_exam"]["ci"][0] > 0


@pytest.mark.slow
def test_series_command_prints_a_cv_table_on_cxr3(cxr3_root, feature_cache_dir, tmp_path):
    from cxrdx.cli import app

    result = CliRunner().invoke(app, [
        "series", "--data", str(cxr3_root), "--target", "survival", "--out", str(tmp_path),
        "--set", f"data.cache_dir={feature_cache_dir}", "--set", "series.bootstrap=300",
    ])
    assert result.exit_code == 0, result.output
    assert "AUC [95% CI]" in result.output and "last_exam" in result.output and "mean_pool" in result.output
    report = json.loads((tmp_path / "series_survival.json").read_text())
    meta = pd.read_csv(cxr3_root / "metadata.csv", dtype={"patient_id": str})
    cohort = meta[meta["patient_id"].str.startswith("ieee8023")]
    exams = cohort.groupby("patient_id").size()
    assert report["cohort"]["patients"] == len(exams)
    assert report["cohort"]["patients_2plus_exams"] == int((exams >= 2).sum())
    died = cohort.dropna(subset=["survival"]).groupby("patient_id")["survival"].last().eq("N")
    assert report["cohort"]["label_counts"] == {"survived": int((~died).sum()), "died": int(died.sum())}
    for model in ("rnn", "mean_pool", "last_exam"):
        auc = report["metrics"]["all"][model]["auc"]
        assert 0 <= auc["ci"][0] <= auc["value"] <= auc["ci"][1] <= 1
    oof = pd.read_csv(tmp_path / "series_survival_oof.csv", dtype={"patient_id": str})
    assert oof["patient_id"].is_unique and len(oof) == len(died)
