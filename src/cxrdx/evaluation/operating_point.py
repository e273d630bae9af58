"""Operating points: the covid threshold reaching a target sensitivity on validation data.

The threshold is chosen on a validation part (never the test fold) with
:func:`sklearn.metrics.roc_curve`, then applied unchanged to the test fold,
where its sensitivity and specificity are what a deployed model would get.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from ..stats.metrics import binary_view


def threshold_for_sensitivity(positive: np.ndarray, score: np.ndarray, target: float = 0.95) -> dict:
    """Highest threshold whose validation sensitivity is >= ``target`` (so specificity is as high as it can be)."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        raise ValueError("validation data needs both positives and negatives to choose a threshold")
    fpr, tpr, thresholds = roc_curve(positive, score)
    ok = np.flatnonzero(tpr >= target)
    i = ok[0]  # roc_curve orders thresholds from high to low: the first one reaching the target
    threshold = float(min(thresholds[i], 1.0))
    return {"target_sensitivity": float(target), "threshold": threshold,
            "val_sensitivity": float(tpr[i]), "val_specificity": float(1.0 - fpr[i])}


def score_at_threshold(positive: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """Sensitivity / specificity / precision on (test) data at a fixed threshold."""
    return binary_view(positive, score, threshold=threshold)
