"""Leave-one-source-out (LOSO) evaluation: how does a model do on a hospital / archive it has never seen?

:func:`source_plan` makes one fold per ``source`` with at least ``evaluation.min_source_images`` images:
the test part is every image of that source; every patient (and duplicate-picture group) with an image
in it is removed from training entirely (patient ids span sources: DarkCovidNet's covid images are
ieee8023 images, COVID-CXNet holds some ieee8023 ids); the validation part (early stopping, temperature,
regularisation, model choice) is a patient-grouped part of the *training sources* only. The plan is a
plain list of ``(train, val, test)`` index arrays, so :func:`cxrdx.evaluation.cv.run_cv` runs every
candidate of a grid (heads and baselines) under it unchanged.

:func:`loso_section` scores the runs per held-out source (accuracy, per-class sensitivity and
specificity, covid-vs-rest AUC, each with a patient-bootstrap CI from :mod:`cxrdx.stats`) beside the
same candidate's random patient-split numbers on the same images ("seen" vs "unseen" hospitals).

:func:`unseen_selection` chooses among the candidates by the sources they did not train on, without using a
source's own result to choose for it: for each held-out source, the candidate with the best mean accuracy over the
*other* held-out sources is scored on it. Pooled, that is an honest estimate of "pick the model by unseen
hospitals"; the candidate best over all held-out sources is the one to ship.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..config import ConfigError, EvalConfig
from ..data.splits import GROUP_COLUMN, LeakageError, assert_no_patient_leakage, kfold_indices
from ..stats.bootstrap import patient_bootstrap, unflatten
from .cv import CVRun, average_runs, rank_key
from .results import headline  # noqa: F401  (re-exported: what a held-out source measures)
from .summary import oof_predictions

UNSEEN_SELECTION_RULE = ("for each held-out source, the candidate with the highest mean accuracy over the other held-out "
                         "sources (each source counted once, whatever its size; ties go to the validation ranking) is "
                         "scored on it: a source's own result never chooses for it")
UNSEEN_SELECTION_CAVEAT = ("the other sources' fold models had this source among their training sources (they are not "
                           "retrained without it)")
POOLED = "all held-out sources"
"""``source`` of the pooled row (every held-out image once)."""
PROTOCOL = ("leave-one-source-out: train on all other sources, test on the held-out one; patients with an image in the "
            "held-out source are removed from training; validation from the training sources only")


@dataclass
class SourcePlan:
    """One ``(train, val, test)`` fold per held-out source."""

    folds: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    sources: list[str]
    """Held-out source of each fold."""
    skipped: list[dict] = field(default_factory=list)
    """Sources never held out: ``{"source", "n_images", "reason"}``."""
    removed: list[int] = field(default_factory=list)
    """Per fold: training-source images left out because their patient has an image in the held-out source."""


def source_column(df: pd.DataFrame) -> pd.Series:
    if "source" not in df.columns:
        raise ConfigError("leave-one-source-out needs a 'source' column in the manifest (cxr3's metadata.csv has one)")
    return df["source"].fillna("unknown").astype(str)


def _linked(df: pd.DataFrame, test: np.ndarray) -> np.ndarray:
    """Rows that share a patient (or a duplicate-picture group) with the ``test`` rows."""
    linked = df["patient_id"].astype(str).isin(set(df["patient_id"].astype(str).iloc[test])).to_numpy().copy()
    if GROUP_COLUMN in df.columns:
        linked |= df[GROUP_COLUMN].isin(set(df[GROUP_COLUMN].iloc[test])).to_numpy()
    return linked


def assert_no_source_leakage(df: pd.DataFrame, train: np.ndarray, val: np.ndarray, test: np.ndarray, source: str) -> None:
    """Raise :class:`LeakageError` if the held-out source or any of its patients is in train or val."""
    src = source_column(df).to_numpy()
    for name, part in (("train", train), ("val", val)):
        if (src[part] == source).any():
            raise LeakageError(f"source leakage: {int((src[part] == source).sum())} image(s) of held-out {source!r} in {name}")
    assert_no_patient_leakage(df.iloc[np.r_[train, val]], df.iloc[test])
    if GROUP_COLUMN in df.columns:
        assert_no_patient_leakage(df.iloc[np.r_[train, val]], df.iloc[test], column=GROUP_COLUMN)
    assert_no_patient_leakage(df.iloc[train], df.iloc[val])


def source_plan(df: pd.DataFrame, min_images: int = 30, seed: int = 42, val_fraction: float = 0.15) -> SourcePlan:
    """Leave-one-source-out folds over ``df`` (sources in order of size, largest first)."""
    src = source_column(df)
    counts = src.value_counts()
    plan = SourcePlan([], [])
    n_inner = max(2, int(round(1.0 / val_fraction)))
    for k, (source, n) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))):
        if n < min_images:
            plan.skipped.append({"source": source, "n_images": int(n), "reason": f"fewer than {min_images} images"})
            continue
        test = np.flatnonzero((src == source).to_numpy())
        linked = _linked(df, test)
        rest = np.flatnonzero(~linked)
        if len(rest) == 0 or df["target"].iloc[rest].nunique() < 2:
            plan.skipped.append({"source": source, "n_images": int(n), "reason": "the other sources hold fewer than two classes"})
            continue
        groups = df[GROUP_COLUMN if GROUP_COLUMN in df.columns else "patient_id"].iloc[rest]
        if groups.nunique() < 2 * n_inner:
            plan.skipped.append({"source": source, "n_images": int(n),
                                 "reason": f"the other sources hold only {groups.nunique()} patient groups"})
            continue
        tr, va = next(kfold_indices(df.iloc[rest].reset_index(drop=True), n_splits=n_inner, seed=seed + 1 + k))
        train, val = rest[tr], rest[va]
        assert_no_source_leakage(df, train, val, test, source)
        plan.folds.append((train, val, test))
        plan.sources.append(source)
        plan.removed.append(int(linked.sum() - len(test)))
    if not plan.folds:
        why = "; ".join(f"{s['source']} ({s['n_images']} images): {s['reason']}" for s in plan.skipped)
        raise ConfigError(f"leave-one-source-out found no source to hold out (evaluation.min_source_images = {min_images}; "
                          f"it needs two or more sources): {why}")
    return plan


def _auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def source_metric_fn(classes: tuple[str, ...] | list[str]):
    """Accuracy, balanced accuracy, per-class sensitivity / specificity and covid-vs-rest AUC (None where undefined).

    Numpy only, so a patient bootstrap of every (candidate, source) pair stays fast."""
    n_cls = len(classes)
    covid = list(classes).index("covid") if "covid" in classes else None

    def fn(y: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
        y = np.asarray(y, dtype=int)
        pred = np.asarray(probs).argmax(1)
        cm = np.bincount(y * n_cls + pred, minlength=n_cls * n_cls).reshape(n_cls, n_cls)
        out: dict[str, float | None] = {"accuracy": float(np.trace(cm) / max(cm.sum(), 1))}
        sens = []
        for k, name in enumerate(classes):
            pos, neg = cm[k].sum(), cm.sum() - cm[k].sum()
            out[f"per_class.{name}.sensitivity"] = float(cm[k, k] / pos) if pos else None
            out[f"per_class.{name}.specificity"] = float((neg - (cm[:, k].sum() - cm[k, k])) / neg) if neg else None
            if pos:
                sens.append(cm[k, k] / pos)
        out["balanced_accuracy"] = float(np.mean(sens)) if sens else None
        if covid is not None:
            out["covid_vs_rest.auc"] = _auc(y == covid, np.asarray(probs)[:, covid])
        return out

    return fn


def source_metrics(y: np.ndarray, probs: np.ndarray, patients: np.ndarray, classes, ev: EvalConfig) -> dict:
    """:func:`source_metric_fn` values with patient-bootstrap CIs (``ci``, same nesting), counts and confusion."""
    fn = source_metric_fn(classes)
    values = unflatten(fn(y, probs))
    ci = patient_bootstrap(y, probs, patients, fn, n_boot=ev.bootstrap, level=ev.ci_level, seed=ev.seed)
    n_cls = len(classes)
    pred = np.asarray(probs).argmax(1)
    cm = np.bincount(np.asarray(y, dtype=int) * n_cls + pred, minlength=n_cls * n_cls).reshape(n_cls, n_cls)
    labels = {c: int((y == k).sum()) for k, c in enumerate(classes)}
    present = [c for c, n in labels.items() if n]
    return {
        "n_images": int(len(y)), "n_patients": int(len(np.unique(np.asarray(patients).astype(str)))),
        "labels": labels, "single_label": present[0] if len(present) == 1 else None,
        **values, "confusion_matrix": cm.tolist(), "ci": unflatten(ci),
    }


def _metrics_by_source(run: CVRun, probs: np.ndarray, rows_by_source: dict[str, np.ndarray], ev: EvalConfig) -> dict[str, dict]:
    y = run.manifest["target"].to_numpy()
    patients = run.manifest["patient_id"].astype(str).to_numpy()
    return {s: source_metrics(y[idx], probs[idx], patients[idx], run.classes, ev) for s, idx in rows_by_source.items()}


def unseen_selection(ranked: list[CVRun], by_source: dict[str, np.ndarray], tested: np.ndarray, ev: EvalConfig) -> dict | None:
    """Choosing a candidate by unseen sources without a test fold (:data:`UNSEEN_SELECTION_RULE`).

    ``ranked``: the candidates in validation order (ties go to the earlier one). Returns ``per_source`` (the
    candidate chosen for each held-out source and its accuracy there, beside the validation choice's),
    ``estimate`` (the pooled metrics of those choices, patient-bootstrap CIs), ``mean_source_accuracy`` per
    candidate and ``choice``: the candidate with the best mean over all held-out sources, the one to ship (its
    own held-out numbers helped choose it: quote ``estimate`` for it). None with fewer than two candidates or
    sources."""
    if len(ranked) < 2 or len(by_source) < 2:
        return None
    first = ranked[0]
    y = first.manifest["target"].to_numpy()
    patients = first.manifest["patient_id"].astype(str).to_numpy()
    probs = {r.candidate.name: loso_probabilities(r) for r in ranked}
    acc = {name: {s: float(np.mean(p[idx].argmax(1) == y[idx])) for s, idx in by_source.items()} for name, p in probs.items()}
    order = {name: k for k, name in enumerate(probs)}

    def best(excluding: str | None) -> str:
        return max(probs, key=lambda n: (np.mean([a for s, a in acc[n].items() if s != excluding]), -order[n]))

    nested = np.full_like(probs[first.candidate.name], np.nan)
    per_source = []
    for source, idx in by_source.items():
        chosen = best(source)
        nested[idx] = probs[chosen][idx]
        per_source.append({"source": source, "chosen": chosen, "accuracy": acc[chosen][source],
                           "validation_choice_accuracy": acc[first.candidate.name][source]})
    return {
        "rule": UNSEEN_SELECTION_RULE, "caveat": UNSEEN_SELECTION_CAVEAT, "validation_choice": first.candidate.name,
        "choice": best(None), "mean_source_accuracy": {n: float(np.mean(list(a.values()))) for n, a in acc.items()},
        "per_source": per_source,
        "estimate": source_metrics(y[tested], nested[tested], patients[tested], first.classes, ev),
    }


def loso_probabilities(run: CVRun) -> np.ndarray:
    """Held-out probabilities of every tested row (NaN for rows of skipped sources)."""
    probs = np.full((len(run.manifest), len(run.classes)), np.nan)
    for f in run.folds:
        probs[f.test_idx] = f.test_probs
    return probs


def _ensemble(runs: dict[str, CVRun], names: list[str]) -> CVRun | None:
    if any(n not in runs for n in names):
        return None
    return average_runs([runs[n] for n in names], "ensemble(" + " + ".join(names) + ")")


def loso_section(loso_runs: dict[str, CVRun], random_runs: dict[str, CVRun], plan: SourcePlan, ev: EvalConfig, *,
                 roi: str = "full", ensemble_top: int = 0) -> dict:
    """JSON-ready LOSO results of every candidate, ranked by validation only, beside the random patient split.

    ``rows``: one per candidate x held-out source (and a pooled row per candidate), each with ``unseen``
    (held out) and ``seen`` (random patient-split out-of-fold predictions of the same images) metrics."""
    ranked = sorted(loso_runs.values(), key=rank_key)
    if ensemble_top >= 2 and len(ranked) >= 2:
        members = [r.candidate.name for r in ranked[:ensemble_top]]
        ens = _ensemble(loso_runs, members)
        loso_runs = {**loso_runs, ens.candidate.name: ens}
        seen_ens = _ensemble(random_runs, members)
        if seen_ens is not None:
            random_runs = {**random_runs, ens.candidate.name: seen_ens}
        ranked = sorted(loso_runs.values(), key=rank_key)
    first = ranked[0]
    src = source_column(first.manifest).to_numpy()
    by_source = {s: np.flatnonzero(src == s) for s in plan.sources}
    tested = np.concatenate([f.test_idx for f in first.folds])
    rows, candidates = [], []
    for rank, run in enumerate(ranked, 1):
        name = run.candidate.name
        unseen = _metrics_by_source(run, loso_probabilities(run), {**by_source, POOLED: tested}, ev)
        seen = {}
        if name in random_runs:
            seen = _metrics_by_source(random_runs[name], oof_predictions(random_runs[name])[0], {**by_source, POOLED: tested}, ev)
        candidates.append({"name": name, "rank": rank, "description": run.candidate.description, "roi": roi,
                           "val_macro_f1": run.mean_val_f1, "val_log_loss": run.mean_val_log_loss, "seconds": round(run.seconds, 1)})
        for source in [*plan.sources, POOLED]:
            u, s = unseen[source], seen.get(source)
            rows.append({
                "candidate": name, "rank": rank, "roi": roi, "source": source, "pooled": source == POOLED,
                "n_images": u["n_images"], "n_patients": u["n_patients"], "labels": u["labels"], "single_label": u["single_label"],
                "unseen": u, "seen": s,
                "accuracy_gap": None if s is None else u["accuracy"] - s["accuracy"],
            })
    per_fold = [{"source": s, "n_train": int(len(tr)), "n_val": int(len(va)), "n_test": int(len(te)),
                 "removed_linked_patients_images": r} for s, (tr, va, te), r in zip(plan.sources, plan.folds, plan.removed)]
    return {
        "protocol": PROTOCOL, "min_source_images": ev.min_source_images, "roi": roi,
        "sources": list(plan.sources), "skipped": plan.skipped, "folds": per_fold,
        "ranked_by": "mean validation macro-F1 over the LOSO folds (validation from the training sources only), "
                     "ties by validation log-loss; held-out sources never used to rank",
        "selected": first.candidate.name, "candidates": candidates, "rows": rows,
        "unseen_selection": unseen_selection(ranked, by_source, tested, ev),
    }


def selected_rows(loso: dict) -> list[dict]:
    """The selected (top-ranked) candidate's rows: the headline."""
    return [r for r in loso["rows"] if r["candidate"] == loso["selected"]]

