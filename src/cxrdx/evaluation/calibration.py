"""Calibration: expected calibration error, reliability diagram data, temperature scaling.

The reliability bins come from :func:`sklearn.calibration.calibration_curve`
on the top-label confidence (is the predicted class right?). Temperature
scaling divides the log-probabilities by one scalar ``T`` fitted to minimise
the validation log-loss; it changes confidence, never the predicted class.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import softmax
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss

_EPS = 1e-7


def _bin_counts(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Images per bin, binned exactly as ``calibration_curve(strategy="uniform")`` bins them."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], confidence)
    return np.bincount(ids, minlength=n_bins)


def reliability(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict:
    """Top-label reliability diagram: per non-empty bin, mean confidence, accuracy and count; plus ECE."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(int)
    counts = _bin_counts(confidence, n_bins)
    nonzero = counts > 0
    if len(np.unique(correct)) < 2:  # calibration_curve needs both outcomes; all right or all wrong
        accuracy = np.array([correct.mean()] * int(nonzero.sum()))
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        ids = np.searchsorted(edges[1:-1], confidence)
        mean_conf = np.array([confidence[ids == b].mean() for b in np.flatnonzero(nonzero)])
    else:
        accuracy, mean_conf = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform")
    weights = counts[nonzero] / max(len(y_true), 1)
    ece = float(np.sum(weights * np.abs(accuracy - mean_conf)))
    return {
        "n_bins": n_bins,
        "ece": ece,
        "bins": [
            {"confidence": float(c), "accuracy": float(a), "count": int(n)}
            for c, a, n in zip(mean_conf, accuracy, counts[nonzero])
        ],
        "mean_confidence": float(confidence.mean()) if len(confidence) else None,
        "accuracy": float(correct.mean()) if len(correct) else None,
    }


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """Bin-count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    return reliability(y_true, probs, n_bins)["ece"]


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0))
    return softmax(logits / temperature, axis=1)


def fit_temperature(probs: np.ndarray, y_true: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The ``T`` minimising the log-loss of ``apply_temperature(probs, T)`` (fit on validation data only)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = list(range(probs.shape[1]))

    def nll(log_t: float) -> float:
        return log_loss(y_true, apply_temperature(probs, float(np.exp(log_t))), labels=labels)

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(res.x))
