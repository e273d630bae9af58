"""The patient bootstrap of :func:`~cxrdx.stats.bootstrap.metrics_with_ci`, vectorised over resamples.

A resample that draws patient ``p`` twice counts each of ``p``'s images twice,
so every metric of :func:`~cxrdx.stats.metrics.compute_metrics` on a resample
is a function of *weighted* counts, one weight per image (how often its patient
was drawn). This module computes those counts for all resamples at once: the
confusion matrices as one matrix product, each one-vs-rest ROC AUC as a
weighted Mann-Whitney statistic (ties count one half, exactly what
``roc_auc_score`` computes on the duplicated rows). Same resamples
(:func:`~cxrdx.stats.bootstrap.patient_resamples`), same definitions of
undefined rates (``None``), same percentile intervals; the values agree with the
scikit-learn loop to rounding (|difference| < 1e-12, ``tests/test_metrics.py``),
about 100x faster (1000 resamples of 453 images: ~0.3 s instead of ~40 s).
"""

from __future__ import annotations

import warnings

import numpy as np

_CHUNK = 250
"""Resamples per block (bounds memory at ``_CHUNK x images`` float64)."""


def resample_weights(inverse: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """``[B, N]`` image weights: how often each image's patient (``inverse``) is drawn in each row of ``draws``."""
    b, p = draws.shape
    counts = np.bincount((draws + p * np.arange(b)[:, None]).ravel(), minlength=b * p).reshape(b, p)
    return counts[:, inverse].astype(np.float64)


def _div(num: np.ndarray, den: np.ndarray, defined: np.ndarray | None = None, zero: float | None = None) -> np.ndarray:
    """``num / den``; NaN (undefined) where ``defined`` is False, ``zero`` (or NaN) where ``den`` is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan if zero is None else zero)
    return out if defined is None else np.where(defined, out, np.nan)


def weighted_auc(w: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC of ``score`` for ``positive`` under each row of weights ``w`` (NaN without both classes)."""
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ws = w[:, order]
    pos = positive[order]
    p_g = np.add.reduceat(ws * pos, starts, axis=1)
    n_g = np.add.reduceat(ws * ~pos, starts, axis=1)
    below = np.cumsum(n_g, axis=1) - n_g
    p_tot, n_tot = p_g.sum(1), n_g.sum(1)
    return _div((p_g * (below + 0.5 * n_g)).sum(1), p_tot * n_tot, (p_tot > 0) & (n_tot > 0))


def _macro(values: list[np.ndarray]) -> np.ndarray:
    stack = np.stack(values, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": no class defined -> NaN
        return np.nanmean(stack, axis=1)


def full_rates(w: np.ndarray, y: np.ndarray, probs: np.ndarray, classes) -> dict[str, np.ndarray]:
    """Every rate of ``compute_metrics`` (flattened keys as :func:`~cxrdx.stats.bootstrap.full_metric_fn`) per row of ``w``."""
    k_n = len(classes)
    pred = probs.argmax(axis=1)
    onehot = np.zeros((len(y), k_n * k_n))
    onehot[np.arange(len(y)), y * k_n + pred] = 1.0
    cm = (w @ onehot).reshape(-1, k_n, k_n)
    total = w.sum(1)
    support, predicted, tp = cm.sum(2), cm.sum(1), np.diagonal(cm, axis1=1, axis2=2)
    out: dict[str, np.ndarray] = {"accuracy": _div(tp.sum(1), total)}
    per: dict[str, dict[str, np.ndarray]] = {}
    for k, name in enumerate(classes):
        present, was_predicted = support[:, k] > 0, predicted[:, k] > 0
        neg = total - support[:, k]
        per[name] = {
            "sensitivity": _div(tp[:, k], support[:, k], present),
            "specificity": _div(neg - (predicted[:, k] - tp[:, k]), neg),
            "precision": _div(tp[:, k], predicted[:, k], present | was_predicted, zero=0.0),
            "f1": _div(2 * tp[:, k], support[:, k] + predicted[:, k], present),
            "auc": weighted_auc(w, y == k, probs[:, k].astype(np.float64)),
        }
    for key in ("sensitivity", "specificity", "precision", "f1", "auc"):
        out[f"macro.{key}"] = _macro([per[c][key] for c in classes])
    for name in classes:
        for key, value in per[name].items():
            out[f"per_class.{name}.{key}"] = value
    if "covid" in classes and k_n > 2:
        c = list(classes).index("covid")
        positive, called = y == c, probs[:, c] >= 0.5
        tp_b, fn_b = w @ (called & positive), w @ (~called & positive)
        tn_b, fp_b = w @ (~called & ~positive), w @ (called & ~positive)
        out["covid_vs_rest.sensitivity"] = _div(tp_b, tp_b + fn_b)
        out["covid_vs_rest.specificity"] = _div(tn_b, tn_b + fp_b)
        out["covid_vs_rest.precision"] = _div(tp_b, tp_b + fp_b)
        out["covid_vs_rest.accuracy"] = _div(tp_b + tn_b, total)
        out["covid_vs_rest.auc"] = per["covid"]["auc"]
    return out


def light_rates(w: np.ndarray, y: np.ndarray, probs: np.ndarray, classes) -> dict[str, np.ndarray]:
    """The columns of :func:`~cxrdx.stats.bootstrap.light_metric_fn` per row of ``w``."""
    full = full_rates(w, y, probs, classes)
    covid = list(classes).index("covid") if "covid" in classes else 0
    name = classes[covid]
    pred = probs.argmax(axis=1)
    neg = w @ (y != covid)
    if len(classes) == 2:
        auc = full[f"per_class.{name}.auc"]
    else:  # sklearn's multi-class AUC needs every class in the resample
        aucs = np.stack([full[f"per_class.{c}.auc"] for c in classes], axis=1)
        auc = np.where(np.isnan(aucs).any(1), np.nan, aucs.mean(1) if aucs.size else np.nan)
    return {
        "accuracy": full["accuracy"],
        "macro.f1": full["macro.f1"],
        "per_class.covid.sensitivity": full[f"per_class.{name}.sensitivity"],
        "per_class.covid.specificity": _div(w @ ((y != covid) & (pred != covid)), neg),
        "macro.auc": auc,
    }


def vectorised_bootstrap(y, probs, patients, classes, draws: np.ndarray, *, light: bool = False) -> dict[str, np.ndarray]:
    """Per flattened key, the ``[B]`` values over the resamples ``draws`` (NaN where undefined)."""
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    _, inverse = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    rates = light_rates if light else full_rates
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(draws), _CHUNK):
        w = resample_weights(inverse, draws[start : start + _CHUNK])
        for key, value in rates(w, y, probs, list(classes)).items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(v) for key, v in parts.items()}
