"""Scoring a cross-validation run: pooled out-of-fold metrics with patient-bootstrap CIs,
per-fold metrics, ROC curves, calibration (optionally temperature-scaled), the covid
operating point, per-source confusion and the lungs-blacked-out control.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from ..config import EvalConfig
from ..stats.bootstrap import fast_patient_bootstrap, metrics_with_ci, patient_bootstrap
from ..stats.metrics import binary_view, compute_metrics
from .calibration import apply_temperature, fit_temperature, reliability
from .confounding import SCORED_SETTINGS, chance_levels, per_source, shortcut_verdict
from .cv import CVRun
from .operating_point import threshold_for_sensitivity
from .results import CVSummary, PooledMetrics

ROC_POINTS = 200


def oof_predictions(run: CVRun, temperature: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, list[float | None]]:
    """Out-of-fold probabilities in manifest order (+ extras), fold of each row, per-fold temperatures."""
    n, k = len(run.manifest), len(run.classes)
    probs = np.full((n, k), np.nan)
    extra = {name: np.full((n, k), np.nan) for name in run.folds[0].extra_probs}
    fold_of = np.full(n, -1)
    temps: list[float | None] = []
    y = run.manifest["target"].to_numpy()
    for f in run.folds:
        t = fit_temperature(f.val_probs, y[f.val_idx]) if temperature else None
        temps.append(t)
        scale = (lambda p: apply_temperature(p, t)) if t else (lambda p: p)
        probs[f.test_idx] = scale(f.test_probs)
        for name, p in f.extra_probs.items():
            extra[name][f.test_idx] = scale(p)
        fold_of[f.test_idx] = f.fold
    if (fold_of < 0).any():
        raise AssertionError("some rows were in no test fold")
    return probs, extra, fold_of, temps


def roc_curves(y: np.ndarray, probs: np.ndarray, classes) -> dict[str, dict]:
    """One-vs-rest ROC curve per class (thinned to at most ``ROC_POINTS`` points for plotting)."""
    out = {}
    for k, name in enumerate(classes):
        pos = y == k
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos, probs[:, k])
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), ROC_POINTS)).astype(int))
        out[name] = {"fpr": fpr[keep].round(4).tolist(), "tpr": tpr[keep].round(4).tolist()}
    return out


def operating_point(run: CVRun, probs: np.ndarray, temps: list, ev: EvalConfig) -> dict | None:
    """Per fold: covid threshold for ``target_sensitivity`` on validation; pooled test sensitivity/specificity."""
    if "covid" not in run.classes:
        return None
    c = list(run.classes).index("covid")
    y = run.manifest["target"].to_numpy()
    decision = np.zeros(len(y), dtype=bool)
    per_fold = []
    for f, t in zip(run.folds, temps):
        val_probs = apply_temperature(f.val_probs, t) if t else f.val_probs
        op = threshold_for_sensitivity(y[f.val_idx] == c, val_probs[:, c], ev.target_sensitivity)
        decision[f.test_idx] = probs[f.test_idx, c] >= op["threshold"]
        test = binary_view(y[f.test_idx] == c, probs[f.test_idx, c], op["threshold"])
        per_fold.append({**op, "test_sensitivity": test["sensitivity"], "test_specificity": test["specificity"]})
    pooled = binary_view(y == c, decision.astype(float), 0.5)
    pooled.pop("auc"), pooled.pop("threshold")

    def fn(yy, dd):
        v = binary_view(yy == c, dd[:, 0], 0.5)
        return {"sensitivity": v["sensitivity"], "specificity": v["specificity"]}

    ci = patient_bootstrap(y, decision.astype(float)[:, None], run.manifest["patient_id"].to_numpy(), fn,
                           n_boot=ev.bootstrap, level=ev.ci_level, seed=ev.seed)
    return {"target_sensitivity": ev.target_sensitivity, "chosen_on": "each fold's validation part",
            "per_fold": per_fold, "test": pooled, "ci": ci}


def _fold_row(run: CVRun, f, probs_test: np.ndarray) -> dict:
    y = run.manifest["target"].to_numpy()[f.test_idx]
    m = compute_metrics(y, probs_test, run.classes)
    part = run.manifest.iloc[f.test_idx]
    row = {"fold": f.fold, "n_test": int(len(f.test_idx)), "test_patients": int(part["patient_id"].nunique()),
           "n_train": int(len(f.train_idx)), "n_val": int(len(f.val_idx)), "val_macro_f1": f.val_f1,
           "accuracy": m["accuracy"], "macro_f1": m["macro"]["f1"], "macro_auc": m["macro"]["auc"],
           "seconds": round(f.seconds, 2), **f.info}
    if "covid" in run.classes:
        row["covid_sensitivity"] = m["per_class"]["covid"]["sensitivity"]
        row["covid_specificity"] = m["per_class"]["covid"]["specificity"]
    return row


def summarise(run: CVRun, ev: EvalConfig, *, full: bool = True) -> tuple[CVSummary, pd.DataFrame]:
    """Results of ``run`` (``.to_dict()`` is JSON-ready) and its out-of-fold prediction table.

    ``full=False`` (comparison grids) bootstraps only the table columns.
    """
    classes = run.classes
    y = run.manifest["target"].to_numpy()
    patients = run.manifest["patient_id"].to_numpy()
    raw, extra_raw, fold_of, _ = oof_predictions(run, temperature=False)
    probs, extra, _, temps = oof_predictions(run, temperature=ev.temperature) if ev.temperature else (raw, extra_raw, fold_of, [None] * len(run.folds))
    boot = dict(n_boot=ev.bootstrap, level=ev.ci_level, seed=ev.seed)
    metrics = metrics_with_ci(y, probs, patients, classes, light=not full, **boot)
    calib = {"raw": reliability(y, raw, ev.ece_bins)}
    if ev.temperature:
        calib["temperature_scaled"] = reliability(y, probs, ev.ece_bins)
        calib["temperatures"] = temps
    if full:
        calib["ece_ci"] = patient_bootstrap(y, probs, patients, lambda a, b: {"ece": reliability(a, b, ev.ece_bins)["ece"]}, **boot)["ece"]
    cand = run.candidate
    summary = CVSummary(
        model={"name": cand.name, "kind": cand.kind, "backbone": cand.backbone, "head": cand.head, "variant": cand.variant,
               "image_size": cand.image_size, "description": cand.description},
        classes=list(classes),
        protocol={
            "folds": len(run.folds), "group_by": run.group_by,
            "leaky": run.group_by != "patient_id",
            "label": ("patient-level (no patient in train and test)" if run.group_by == "patient_id"
                      else "IMAGE-LEVEL (leaky: the same patient can be in train and test; for comparison only)"),
            "fold_seed": ev.fold_seed, "validation": f"{ev.val_fraction:.0%} of each fold's training patients",
            "n_images": int(len(y)), "n_patients": int(len(np.unique(patients.astype(str)))),
            "class_counts": {c: int((y == k).sum()) for k, c in enumerate(classes)},
        },
        pooled=PooledMetrics(metrics),
        per_fold=[_fold_row(run, f, probs[f.test_idx]) for f in run.folds],
        mean_val_macro_f1=run.mean_val_f1,
        mean_val_log_loss=run.mean_val_log_loss,
        seconds=round(run.seconds, 1),
        calibration=calib,
        temperature_scaling=bool(ev.temperature),
        full=full,
    )
    if full:
        summary.roc = roc_curves(y, probs, classes)
        summary.operating_point_data = operating_point(run, probs, temps, ev)
        summary.per_source = per_source(run.manifest, probs, classes)
        summary.shortcut = {name: _shortcut(y, p, patients, classes, metrics["accuracy"], boot, SCORED_SETTINGS.get(name, f"With the {name} images"))
                            for name, p in extra.items()}
    table = _prediction_table(run, probs, fold_of, extra)
    return summary, table


def _shortcut(y: np.ndarray, probs: np.ndarray, patients: np.ndarray, classes, accuracy_with_lungs: float, boot: dict,
              setting: str = "With the lungs blacked out") -> dict:
    """The shortcut control of one extra feature set (e.g. lungs blacked out): accuracy with CI against chance."""
    m = compute_metrics(y, probs, classes)
    ci = fast_patient_bootstrap(y, probs, patients, classes, light=True, **boot)  # the grid columns, vectorised
    chance = chance_levels(y, len(classes))
    return {
        "accuracy": m["accuracy"], "accuracy_ci": ci["accuracy"], "macro_f1": m["macro"]["f1"],
        "confusion_matrix": m["confusion_matrix"], "chance": chance,
        "verdict": shortcut_verdict(m["accuracy"], ci["accuracy"], chance["majority"], accuracy_with_lungs, setting=setting),
    }


def _prediction_table(run: CVRun, probs: np.ndarray, fold_of: np.ndarray, extra: dict) -> pd.DataFrame:
    m = run.manifest
    cols = {"image": m["relpath"] if "relpath" in m else m["image"], "patient_id": m["patient_id"], "label": m["label"]}
    if "source" in m:
        cols["source"] = m["source"]
    df = pd.DataFrame(cols).reset_index(drop=True)
    df["fold"] = fold_of
    for k, c in enumerate(run.classes):
        df[f"p_{c}"] = probs[:, k]
    df["predicted"] = [run.classes[i] for i in probs.argmax(1)]
    for name, p in extra.items():
        df[f"predicted_{name}"] = [run.classes[i] for i in p.argmax(1)]
    return df
