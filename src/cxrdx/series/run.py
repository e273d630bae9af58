"""``cxrdx series`` end to end: cohort -> cached exam embeddings -> per-patient sequences -> CV -> JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..data.io import ReadLimits
from ..data.manifest import load_manifest
from ..features.cache import extract_features
from ..models.factory import create_model
from .cv import SeriesCVResult, cross_validate
from .model import SERIES_MODELS
from .sequences import build_series, cohort_summary


def load_cohort(cfg: Config) -> pd.DataFrame:
    df = load_manifest(cfg.data.resolved_root(), cfg.data.manifest, classes=cfg.data.classes)
    prefix = cfg.series.patient_prefix
    if prefix:
        df = df[df["patient_id"].astype(str).str.startswith(prefix)].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"no patients whose patient_id starts with {prefix!r}")
    return df


def site_overlap(exams: pd.DataFrame, labels: pd.Series) -> dict | None:
    """Source confounding: share of each class's patients whose ``location`` has no patient of the other class."""
    if "location" not in exams.columns:
        return None
    site = exams.groupby("patient_id")["location"].first().fillna("unknown").loc[labels.index]
    out = {}
    for k in (0, 1):
        own = set(site[labels == k])
        other = set(site[labels == 1 - k])
        only = site[labels == k].isin(own - other - {"unknown"})
        out[int(k)] = {"patients": int((labels == k).sum()), "from_single_class_locations": int(only.sum())}
    return out


def run_series(cfg: Config, *, progress: bool = True) -> tuple[dict, SeriesCVResult]:
    t0 = time.perf_counter()
    sc = cfg.series
    df = load_cohort(cfg)
    model = create_model(cfg.model.backbone, "pool", weights=cfg.model.weights, classes=list(cfg.data.classes), image_size=cfg.data.image_size)
    fs = extract_features(model, df, cfg.data.resolved_cache_dir(), progress=progress,
                          limits=ReadLimits.from_config(cfg.data))
    pooled = fs.features.astype(np.float32).mean(axis=(2, 3))
    series = build_series(fs.manifest, pooled, sc.target)
    summary = cohort_summary(series, sc.target)
    labels = pd.Series(series.labels, index=series.patient_ids)
    labelled = labels[labels >= 0]
    summary["site_overlap"] = site_overlap(fs.manifest, labelled)
    result = cross_validate(series, sc, progress=progress)
    report = {
        "target": sc.target,
        "positive_class": {"diagnosis": "covid (last exam)", "survival": "died"}[sc.target],
        "cohort": {"patient_prefix": sc.patient_prefix, **summary},
        "protocol": f"{min(sc.folds, int(np.bincount(result.labels).min()))}-fold stratified CV over patients "
                    f"(x{sc.repeats}), embeddings {cfg.model.backbone}/{cfg.model.weights} mean-pooled, "
                    f"PCA {sc.pca_dim} fitted per training fold; 95% CIs: {sc.bootstrap} patient bootstrap resamples",
        "models": {name: f"{sc.rnn.upper()} over exams in offset_days order + time gaps" if name == "rnn"
                   else SERIES_MODELS.describe(name) for name in SERIES_MODELS},
        "metrics": result.metrics,
        "failures": [{"image": p, "error": e} for p, e in fs.failures],
        "seconds": time.perf_counter() - t0,
        "config": cfg.to_dict()["series"],
    }
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"series_{sc.target}.json").write_text(json.dumps(report, indent=2))
    pd.DataFrame({"patient_id": result.patient_ids, "exams": result.lengths, "label": result.labels,
                  **{f"p_{k}": v for k, v in result.probs.items()}}).to_csv(out / f"series_{sc.target}_oof.csv", index=False)
    return report, result
