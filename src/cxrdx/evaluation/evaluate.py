"""``cxrdx evaluate`` as a library function: score a trained run folder on its split or on other data.

The CLI, notebooks and services call :func:`evaluate_run`; the CLI only prints the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import Config
from ..data.io import ReadLimits
from ..data.manifest import ManifestError, load_manifest
from ..inference.predictor import predict_manifest
from ..models.run import load_run
from ..registry import UnknownNameError
from ..stats.bootstrap import metrics_with_ci

PARTS = ("test", "val", "train", "all")
STABILITY_FILE = "stability.json"
"""``RUN/stability.json``: the stability of the run's own split (``cxrdx evaluate --stability``); the report shows it."""


@dataclass
class EvaluationResult:
    metrics: dict
    """:func:`cxrdx.stats.metrics_with_ci` of the scored rows (JSON-ready; ``cxrdx evaluate --json`` writes it)."""
    failures: list[tuple[str, str]] = field(default_factory=list)
    """``(image, error)`` of every row that could not be read (skipped, never fatal)."""
    title: str = ""
    """What was scored, e.g. ``runs/demo on test split``."""
    stability: dict | None = None
    """:func:`cxrdx.evaluation.stability.prediction_stability` of the scored rows (``stability=True``)."""


def run_config(run_dir: str | Path) -> Config:
    """The configuration a run was trained with (``config.json``), or the defaults when it has none."""
    path = Path(run_dir) / "config.json"
    return Config.from_dict(json.loads(path.read_text())) if path.is_file() else Config()


def evaluation_rows(run_dir: str | Path, classes: tuple[str, ...], *, data=None, manifest=None, part: str = "test") -> pd.DataFrame:
    """Rows to score: the manifest of ``data`` / ``manifest`` if given, else ``part`` of the run's ``split.csv``."""
    if data or manifest:
        manifest = Path(manifest) if manifest else None
        return load_manifest(data or (manifest.parent if manifest else None), manifest, classes=classes)
    if part not in PARTS:
        raise UnknownNameError("split parts", part, list(PARTS))
    split_file = Path(run_dir) / "split.csv"
    if not split_file.is_file():
        raise FileNotFoundError(f"{split_file} not found: pass --data or --manifest")
    split = pd.read_csv(split_file, dtype={"patient_id": str})
    df = split if part == "all" else split[split["part"] == part]
    unknown = sorted(set(df["label"].astype(str)) - set(classes))
    if unknown:
        raise ManifestError(f"{split_file}: label(s) {unknown[:5]} are not classes of this model {list(classes)}")
    return df.assign(target=[classes.index(lab) for lab in df["label"]]).reset_index(drop=True)


def evaluate_run(run_dir: str | Path, *, data: str | Path | None = None, manifest: str | Path | None = None,
                 part: str = "test", cache_dir: str | Path | None = None, stability: bool = False,
                 runtime: str = "torch") -> EvaluationResult:
    """Accuracy, per-class sensitivity / specificity / precision / F1 / AUC, confusion matrix, patient-bootstrap CIs.

    ``part`` (test | val | train | all) picks rows of the run's ``split.csv``; it is ignored with ``data`` /
    ``manifest``. Features are cached in ``cache_dir`` (default: the run's configured cache).
    ``stability``: also re-predict the rows after each perturbation of :mod:`cxrdx.evaluation.stability`
    (JPEG re-encoding, one grey level of noise) with ``runtime``, and report how often the class holds.
    """
    model = load_run(run_dir)
    classes = tuple(model.classes)
    df = evaluation_rows(run_dir, classes, data=data, manifest=manifest, part=part)
    data_cfg = run_config(run_dir).data
    cache = Path(cache_dir) if cache_dir else data_cfg.resolved_cache_dir()
    probs, kept, failures = predict_manifest(model, df, cache)
    metrics = metrics_with_ci(kept["target"].to_numpy(), probs, kept["patient_id"].to_numpy(), classes)
    title = f"{run_dir} on {'given data' if data or manifest else part + ' split'}"
    stable = stability_of_rows(run_dir, model, kept, runtime, ReadLimits.from_config(data_cfg)) if stability else None
    if stable is not None and not (data or manifest):  # the run's own split: kept beside the run for its report
        stable["part"] = part
        (Path(run_dir) / STABILITY_FILE).write_text(json.dumps(stable, indent=2))
    return EvaluationResult(metrics, list(failures), title, stable)


def stability_of_rows(run_dir: str | Path, model, rows: pd.DataFrame, runtime: str, limits: ReadLimits) -> dict:
    """:func:`~cxrdx.evaluation.stability.prediction_stability` of ``rows`` (readable images only), with ``runtime``."""
    from ..data.io import read_image
    from ..inference.runtimes import create_predictor
    from .stability import prediction_stability

    predictor = create_predictor(run_dir, runtime, model=model, limits=limits, guard=False)
    stable = prediction_stability(predictor, rows["image"].tolist(), rows["patient_id"].astype(str).to_numpy(),
                                  read=lambda path: read_image(path, limits=limits))
    return {"runtime": runtime, **stable}
