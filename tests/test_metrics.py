"""Evaluation maths: patient bootstrap CIs, calibration, temperature scaling, operating points (scikit-learn based)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdx.stats.bootstrap import full_metric_fn, light_metric_fn, metrics_with_ci, patient_bootstrap
from cxrdx.evaluation.calibration import apply_temperature, expected_calibration_error, fit_temperature, reliability
from cxrdx.stats.metrics import compute_metrics
from cxrdx.evaluation.operating_point import score_at_threshold, threshold_for_sensitivity

CLASSES = ("covid", "pneumonia", "normal")


def _probs(y: np.ndarray, correct: np.ndarray, rng, conf: float = 0.8) -> np.ndarray:
    """Predictions that are right where ``correct`` is True, with the winning class at ``conf``."""
    n, k = len(y), 3
    pred = np.where(correct, y, (y + 1 + rng.integers(0, 2, n)) % k)
    probs = np.full((n, k), (1 - conf) / (k - 1))
    probs[np.arange(n), pred] = conf
    return probs


def test_bootstrap_resamples_patients_not_images():
    """Many correlated images of few patients: the patient CI is much wider than an (invalid) image-level one."""
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(20), 10)  # 20 patients x 10 images
    y = np.tile([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], 20)
    patient_right = rng.random(20) < 0.7
    probs = _probs(y, patient_right[patients], rng)  # a patient's images are all right or all wrong
    fn = light_metric_fn(CLASSES)
    by_patient = patient_bootstrap(y, probs, patients, fn, n_boot=300, seed=1)["accuracy"]
    by_image = patient_bootstrap(y, probs, np.arange(len(y)), fn, n_boot=300, seed=1)["accuracy"]
    acc = compute_metrics(y, probs, CLASSES)["accuracy"]
    assert by_patient[0] <= acc <= by_patient[1]
    assert (by_patient[1] - by_patient[0]) > 2 * (by_image[1] - by_image[0])


def test_metrics_with_ci_nests_like_metrics_and_brackets_them():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    probs = _probs(y, rng.random(300) < 0.8, rng)
    m = metrics_with_ci(y, probs, np.arange(300) // 2, CLASSES, n_boot=200)
    assert m["ci_method"]["unit"] == "patient" and m["ci_method"]["n_patients"] == 150
    lo, hi = m["ci"]["accuracy"]
    assert lo <= m["accuracy"] <= hi and hi - lo < 0.2
    for name in CLASSES:
        for key in ("sensitivity", "specificity", "precision", "f1", "auc"):
            lo, hi = m["ci"]["per_class"][name][key]
            assert lo <= m["per_class"][name][key] + 1e-9 and m["per_class"][name][key] <= hi + 1e-9
    assert set(m["ci"]["covid_vs_rest"]) >= {"sensitivity", "specificity", "auc"}
    assert "support" not in m["ci"]["per_class"]["covid"]


def test_light_metric_fn_agrees_with_compute_metrics():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 200)
    probs = rng.dirichlet([1, 1, 1], 200)
    full, light = full_metric_fn(CLASSES)(y, probs), light_metric_fn(CLASSES)(y, probs)
    for key in ("accuracy", "macro.f1", "per_class.covid.sensitivity", "per_class.covid.specificity", "macro.auc"):
        assert light[key] == pytest.approx(full[key])


def test_reliability_bins_and_ece():
    rng = np.random.default_rng(3)
    n = 4000
    y = rng.integers(0, 3, n)
    calibrated = _probs(y, rng.random(n) < 0.8, rng, conf=0.8)  # 80% confident, 80% right
    overconfident = _probs(y, rng.random(n) < 0.6, rng, conf=0.95)  # 95% confident, 60% right
    rel = reliability(y, calibrated, n_bins=10)
    assert sum(b["count"] for b in rel["bins"]) == n
    assert rel["ece"] < 0.03
    assert expected_calibration_error(y, overconfident) == pytest.approx(0.35, abs=0.03)


def test_temperature_scaling_fixes_overconfidence_and_keeps_predictions():
    rng = np.random.default_rng(4)
    n = 3000
    y = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(4 * logits) / np.exp(4 * logits).sum(1, keepdims=True)  # sharpened 4x: overconfident
    t = fit_temperature(probs[:1500], y[:1500])
    assert 2.5 < t < 6
    fixed = apply_temperature(probs[1500:], t)
    assert (fixed.argmax(1) == probs[1500:].argmax(1)).all()
    assert expected_calibration_error(y[1500:], fixed) < expected_calibration_error(y[1500:], probs[1500:]) / 2


def test_operating_point_reaches_target_on_validation():
    rng = np.random.default_rng(5)
    pos = rng.random(600) < 0.3
    score = np.clip(rng.normal(np.where(pos, 0.7, 0.35), 0.15), 0, 1)
    op = threshold_for_sensitivity(pos[:300], score[:300], target=0.95)
    assert op["val_sensitivity"] >= 0.95
    assert ((score[:300] >= op["threshold"]) & pos[:300]).sum() / pos[:300].sum() == pytest.approx(op["val_sensitivity"])
    test = score_at_threshold(pos[300:], score[300:], op["threshold"])
    assert test["threshold"] == op["threshold"] and 0.8 < test["sensitivity"] <= 1.0 and test["specificity"] < 0.9
    with pytest.raises(ValueError):
        threshold_for_sensitivity(np.ones(5, bool), np.ones(5))
