"""95% confidence intervals by bootstrap resampling of **patients**, not images.

Images of one patient are correlated; resampling images would give intervals
that are too narrow. Each resample draws patients with replacement and keeps
all of their images, then recomputes the metrics with scikit-learn.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

from .metrics import check_evaluable, compute_metrics

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float | None]]


def flatten(tree: dict, prefix: str = "") -> dict[str, float | None]:
    """``{"per_class": {"covid": {"f1": 0.9}}}`` -> ``{"per_class.covid.f1": 0.9}`` (numbers and None only)."""
    flat: dict[str, float | None] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = None if value is None else float(value)
    return flat


def unflatten(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def full_metric_fn(classes: tuple[str, ...] | list[str]) -> MetricFn:
    """Every rate of :func:`compute_metrics` (not counts), flattened."""

    def fn(y: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
        flat = flatten(compute_metrics(y, probs, classes))
        return {k: v for k, v in flat.items() if _is_rate(k)}

    return fn


def _is_rate(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return key != "n" and leaf not in ("support", "tp", "fn", "tn", "fp", "threshold") and not key.startswith("confusion")


def light_metric_fn(classes: tuple[str, ...] | list[str]) -> MetricFn:
    """The comparison-table columns only (accuracy, macro-F1, covid sensitivity, macro AUC): fast enough for grids."""
    labels = list(range(len(classes)))
    covid = list(classes).index("covid") if "covid" in classes else 0

    def fn(y: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
        pred = probs.argmax(1)
        recall = recall_score(y, pred, labels=labels, average=None, zero_division=0)
        neg = y != covid
        present = np.isin(labels, y)  # absent classes have no F1 (as in compute_metrics)
        f1 = f1_score(y, pred, labels=labels, average=None, zero_division=0)
        out = {
            "accuracy": float(accuracy_score(y, pred)),
            "macro.f1": float(np.mean(f1[present])),
            "per_class.covid.sensitivity": float(recall[covid]) if present[covid] else None,
            "per_class.covid.specificity": float(recall_score(neg, pred != covid, zero_division=0)) if neg.any() else None,
            "macro.auc": None,
        }
        if len(np.unique(y)) == len(classes):
            if len(classes) == 2:
                out["macro.auc"] = float(roc_auc_score(y == covid, probs[:, covid]))
            else:
                out["macro.auc"] = float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=labels))
        return out

    return fn


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> list[float | None]:
    """``[low, high]`` percentile interval of the finite ``samples``; ``[None, None]`` if there are none."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return [None, None]
    alpha = (1.0 - level) / 2.0
    return [float(v) for v in np.quantile(samples, [alpha, 1.0 - alpha])]


def patient_resamples(n_patients: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``[n_boot, n_patients]`` indices of patients drawn with replacement: the one resampling scheme of cxrdx.

    Every patient bootstrap (:func:`patient_bootstrap`, :func:`patient_mean_ci`, the paired,
    vectorised one of :mod:`cxrdx.series.cv`) draws its resamples here, so one seed gives the
    same patients everywhere. Row ``b`` lists the patients (indices into the caller's sorted
    unique ids) of resample ``b``; a patient drawn twice counts twice.
    """
    return np.random.default_rng(seed).integers(0, n_patients, size=(n_boot, n_patients))


def patient_mean_ci(
    values: np.ndarray, patients: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
) -> dict:
    """Mean of per-image ``values`` (NaNs dropped) with a patient-clustered percentile bootstrap CI.

    Returns ``{"mean", "ci": [lo, hi], "n", "patients"}``; the CI is ``[mean, mean]``
    with a single patient and ``None`` values when nothing is left.
    """
    values = np.asarray(values, dtype=np.float64)
    patients = np.asarray(patients)
    keep = ~np.isnan(values)
    values, patients = values[keep], patients[keep]
    if values.size == 0:
        return {"mean": None, "ci": [None, None], "n": 0, "patients": 0}
    ids, inverse = np.unique(patients, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    mean = float(values.mean())
    if len(ids) == 1:
        return {"mean": mean, "ci": [mean, mean], "n": int(values.size), "patients": 1}
    draw = patient_resamples(len(ids), n_boot, seed)
    boot = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    return {"mean": mean, "ci": percentile_ci(boot, level), "n": int(values.size), "patients": int(len(ids))}


def patient_bootstrap(
    y: np.ndarray,
    probs: np.ndarray,
    patients: np.ndarray,
    metric_fn: MetricFn,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float | None]]:
    """Percentile CI of every key of ``metric_fn`` over ``n_boot`` patient resamples.

    Returns ``{key: [low, high]}``; ``[None, None]`` where the metric was undefined
    in too many resamples (e.g. an AUC when a class is absent).
    """
    y = np.asarray(y)
    probs = np.asarray(probs)
    patients = np.asarray(patients).astype(str)
    uniq, inverse = np.unique(patients, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(inverse, minlength=len(uniq)))]
    rows_of = [order[starts[i] : starts[i + 1]] for i in range(len(uniq))]
    samples: dict[str, list[float]] = {}
    for chosen in patient_resamples(len(uniq), n_boot, seed):
        idx = np.concatenate([rows_of[c] for c in chosen])
        for key, value in metric_fn(y[idx], probs[idx]).items():
            lst = samples.setdefault(key, [])
            if value is not None and np.isfinite(value):
                lst.append(value)
    return {key: percentile_ci(values, level) if len(values) >= 0.9 * n_boot else [None, None]
            for key, values in samples.items()}


def fast_patient_bootstrap(y, probs, patients, classes, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                           light: bool = False) -> dict[str, list[float | None]]:
    """:func:`patient_bootstrap` with :func:`full_metric_fn` (or :func:`light_metric_fn`), vectorised over the
    resamples (:mod:`cxrdx.stats.resampled`): the same resamples and intervals, to rounding, ~100x faster."""
    from .resampled import vectorised_bootstrap

    n_patients = len(np.unique(np.asarray(patients).astype(str)))
    values = vectorised_bootstrap(y, probs, patients, classes, patient_resamples(n_patients, n_boot, seed), light=light)
    fn = light_metric_fn(classes) if light else full_metric_fn(classes)
    out = {}
    for key in fn(np.asarray(y), np.asarray(probs)):  # the loop's keys, in its order
        v = values[key]
        v = v[np.isfinite(v)]
        out[key] = percentile_ci(v, level) if len(v) >= 0.9 * n_boot else [None, None]
    return out


def metrics_with_ci(
    y: np.ndarray, probs: np.ndarray, patients: np.ndarray, classes, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
    light: bool = False,
) -> dict:
    """:func:`compute_metrics` plus ``ci`` (same nesting as the metrics) and a note on how it was computed.

    ``light=True`` bootstraps only the comparison-table columns (:func:`light_metric_fn`, fast enough for
    grids); its ``ci_method`` then has no ``n_patients`` (as ever in cv / compare grid summaries).
    """
    check_evaluable(y, classes)
    metrics = compute_metrics(y, probs, classes)
    metrics["ci"] = unflatten(fast_patient_bootstrap(y, probs, patients, classes, n_boot=n_boot, level=level, seed=seed,
                                                     light=light))
    metrics["ci_method"] = {"resamples": n_boot, "level": level, "unit": "patient", "seed": seed}
    if not light:
        metrics["ci_method"]["n_patients"] = int(len(np.unique(np.asarray(patients).astype(str))))
    return metrics
