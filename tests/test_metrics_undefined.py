"""Issue 11, finding 8: metrics never pretend. Absent classes are undefined, a single-class set is refused."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from cxrdx.evaluation.tables import metrics_table
from cxrdx.stats import MetricsError, compute_metrics, metrics_with_ci

CLASSES = ("covid", "pneumonia", "normal")


def _probs(pred: list[int]) -> np.ndarray:
    out = np.full((len(pred), 3), 0.1)
    out[np.arange(len(pred)), pred] = 0.8
    return out


def test_absent_class_is_undefined_not_zero():
    y = np.array([0, 0, 2, 2, 2, 0])  # no pneumonia in the truth
    probs = _probs([0, 2, 2, 2, 0, 0])  # and never predicted
    m = compute_metrics(y, probs, CLASSES)
    pneu = m["per_class"]["pneumonia"]
    assert pneu["sensitivity"] is None and pneu["f1"] is None and pneu["auc"] is None and pneu["precision"] is None
    assert pneu["specificity"] == 1.0 and pneu["support"] == 0
    # macro averages are over the classes where a metric is defined
    assert m["macro"]["sensitivity"] == pytest.approx(np.mean([m["per_class"][c]["sensitivity"] for c in ("covid", "normal")]))
    predicted = compute_metrics(y, _probs([1, 2, 2, 2, 0, 0]), CLASSES)["per_class"]["pneumonia"]
    assert predicted["precision"] == 0.0 and predicted["sensitivity"] is None  # predicted but absent: precision is 0


def test_absent_class_prints_undefined_with_no_zero_interval():
    y = np.array([0, 0, 2, 2, 2, 0, 0, 2])
    patients = np.array([f"p{i}" for i in range(len(y))])
    m = metrics_with_ci(y, _probs([0, 2, 2, 2, 0, 0, 0, 2]), patients, CLASSES, n_boot=50)
    assert m["ci"]["per_class"]["pneumonia"]["sensitivity"] == [None, None]
    console = Console(width=200, record=True)
    console.print(metrics_table(m))
    text = console.export_text()
    row = next(line for line in text.splitlines() if "pneumonia" in line)
    assert "undefined" in row and "0.000 [0.000, 0.000]" not in row


def test_single_class_evaluation_is_refused():
    y = np.zeros(5, dtype=int)
    with pytest.raises(MetricsError, match="one label 'covid'") as info:
        metrics_with_ci(y, _probs([0, 0, 0, 1, 0]), np.arange(5).astype(str), CLASSES, n_boot=10)
    assert "\n" not in str(info.value)
    with pytest.raises(MetricsError, match="nothing to evaluate"):
        metrics_with_ci(np.zeros(0, int), np.zeros((0, 3)), np.zeros(0, str), CLASSES, n_boot=10)
