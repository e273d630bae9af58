"""Classification metrics, all from scikit-learn.

``compute_metrics`` returns a plain dict (JSON-ready): accuracy, per-class
sensitivity (recall) / specificity / precision / F1 / one-vs-rest ROC AUC, their
macro averages, the confusion matrix, and the binary covid-vs-rest view.

A rate whose denominator is empty is ``None`` ("undefined"), never 0: a class absent
from the truth has no sensitivity, F1 or AUC (and no precision unless it was predicted);
macro averages are over the classes where the metric is defined.
:func:`check_evaluable` refuses a set that holds a single class (accuracy 1.000 there
means nothing).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)


class MetricsError(ValueError):
    """Predictions that cannot be scored meaningfully (no rows, or a single true class)."""


def check_evaluable(y_true: np.ndarray, classes: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`MetricsError` unless ``y_true`` holds at least two of ``classes``."""
    y_true = np.asarray(y_true, dtype=int)
    if y_true.size == 0:
        raise MetricsError("nothing to evaluate: no image could be scored")
    present = sorted({int(v) for v in np.unique(y_true)})
    if len(present) < 2:
        names = [classes[k] if 0 <= k < len(classes) else str(k) for k in present]
        raise MetricsError(
            f"cannot evaluate: all {y_true.size} image(s) have the one label {names[0]!r}; metrics need at least "
            f"two of the classes {list(classes)} (sensitivity / specificity / AUC are undefined otherwise)"
        )


def _safe_auc(y_bin: np.ndarray, score: np.ndarray) -> float | None:
    if len(np.unique(y_bin)) < 2:
        return None
    return float(roc_auc_score(y_bin, score))


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str] | tuple[str, ...]) -> dict:
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    labels = list(range(len(classes)))
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    precision = precision_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    per_class = {}
    for k, name in enumerate(classes):
        negatives = y_true != k
        spec = recall_score(negatives, y_pred != k, zero_division=0) if negatives.any() else None
        present, predicted = bool((y_true == k).any()), bool((y_pred == k).any())
        per_class[name] = {
            "sensitivity": float(recall[k]) if present else None,
            "specificity": None if spec is None else float(spec),
            "precision": float(precision[k]) if present or predicted else None,
            "f1": float(f1[k]) if present else None,
            "auc": _safe_auc((y_true == k).astype(int), probs[:, k]),
            "support": int((y_true == k).sum()),
        }

    def _macro(key: str) -> float | None:
        vals = [v[key] for v in per_class.values() if v[key] is not None]
        return float(np.mean(vals)) if vals else None

    out = {
        "n": int(len(y_true)),
        "classes": list(classes),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro": {key: _macro(key) for key in ("sensitivity", "specificity", "precision", "f1", "auc")},
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }
    if "covid" in classes and len(classes) > 2:
        c = list(classes).index("covid")
        out["covid_vs_rest"] = binary_view(y_true == c, probs[:, c])
    return out


def binary_view(positive: np.ndarray, score: np.ndarray, threshold: float | None = None) -> dict:
    """Sensitivity / specificity / AUC of one class against the rest.

    Without a threshold the decision is the argmax one (the class probability
    above 0.5 in the binary case); pass ``threshold`` for an operating point.
    """
    positive = np.asarray(positive, dtype=bool)
    pred = score >= (0.5 if threshold is None else threshold)
    tp, fn = int((pred & positive).sum()), int((~pred & positive).sum())
    tn, fp = int((~pred & ~positive).sum()), int((pred & ~positive).sum())
    return {
        "threshold": 0.5 if threshold is None else float(threshold),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "accuracy": (tp + tn) / len(positive) if len(positive) else None,
        "auc": _safe_auc(positive.astype(int), score),
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
    }
