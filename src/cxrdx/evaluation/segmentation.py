"""Lung segmentation quality on held-out patients: Dice and IoU per image, per source, with CIs.

Masks are compared at each image's own size (the predicted mask is mapped back
from the network size). Means carry 95% patient-bootstrap CIs from the one
patient bootstrap, :func:`cxrdx.stats.bootstrap.patient_mean_ci`. The all-lung
baseline (every pixel called lung) is reported beside the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.io import ImageReadError
from ..data.lungseg import default_lungseg_root, load_lungseg, read_mask
from ..features.lungs import LungPredictor, create_lung_predictor
from ..models.segmenter import load_segmenter
from ..stats.bootstrap import patient_mean_ci

EVAL_FILE = "evaluation.json"
PER_IMAGE_FILE = "evaluation_per_image.csv"
METRICS = ("dice", "iou", "baseline_dice")


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """``2|A&B| / (|A|+|B|)``; 1.0 when both masks are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def iou_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """``|A&B| / |A|B|``; 1.0 when both masks are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else int((pred & truth).sum()) / union


@dataclass
class SegmentationResult:
    summary: dict
    """``{"all": {metric: {mean, ci, n, patients}}, "per_source": {source: {...}}, "failures": [...]}``."""
    per_image: pd.DataFrame
    title: str = "lung segmentation"
    failures: list[dict] = field(default_factory=list)

    def save(self, run_dir: str | Path) -> Path:
        run_dir = Path(run_dir)
        (run_dir / EVAL_FILE).write_text(json.dumps(self.summary, indent=2))
        self.per_image.to_csv(run_dir / PER_IMAGE_FILE, index=False)
        return run_dir / EVAL_FILE


def summarise(per_image: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean + patient-bootstrap 95% CI of every metric, over all rows and per source."""

    def block(rows: pd.DataFrame) -> dict:
        return {m: patient_mean_ci(rows[m].to_numpy(float), rows["patient_id"].to_numpy(), n_boot=n_boot, seed=seed)
                for m in METRICS}

    return {
        "all": block(per_image),
        "per_source": {str(s): block(g) for s, g in per_image.groupby("source", sort=True)},
        "ci": {"method": "patient bootstrap (percentile)", "resamples": n_boot, "level": 0.95, "seed": seed},
    }


def score_rows(predictor: LungPredictor, rows: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Predict every row's image and score it against its mask; unreadable pairs are listed, not fatal."""
    results = predictor.predict_sources(zip(rows["image"], rows["image"]))
    records, failures = [], []
    for (_, row), res in zip(rows.iterrows(), results):
        name = row.get("name", row["image"])
        if res.mask is None:
            failures.append({"image": name, "error": res.error.code, "message": str(res.error)})
            continue
        try:
            truth = read_mask(row["mask"], limits=predictor.limits)
        except ImageReadError as exc:
            failures.append({"image": name, "error": exc.code, "message": str(exc)})
            continue
        if truth.shape != res.mask.shape:
            failures.append({"image": name, "error": "size_mismatch", "message": "mask and image differ in size"})
            continue
        records.append({
            "image": name, "source": row["source"], "patient_id": row["patient_id"],
            "dice": dice_score(res.mask, truth), "iou": iou_score(res.mask, truth),
            "baseline_dice": dice_score(np.ones_like(truth), truth),
            "lung_fraction": float(res.mask.mean()), "no_lungs": res.error is not None,
        })
    return pd.DataFrame.from_records(records), failures


def evaluate_segmenter(
    run_dir: str | Path, *, data: str | Path | None = None, part: str = "test", runtime: str = "torch",
    n_boot: int = 2000, seed: int = 0, batch_size: int = 8,
) -> SegmentationResult:
    """Dice / IoU of a segmenter run on its held-out patients (``part`` of the run's ``split.csv``)."""
    run_dir = Path(run_dir)
    info = load_segmenter(run_dir).info
    root = Path(data) if data else Path(info.extra.get("data") or default_lungseg_root())
    split_path = run_dir / info.extra.get("split_file", "split.csv")
    if not split_path.is_file():
        raise FileNotFoundError(f"{split_path} not found: the run does not say which patients were held out")
    split = pd.read_csv(split_path, dtype=str, keep_default_na=False)
    held = split.loc[split["part"] == part, "name"]
    if held.empty:
        raise ValueError(f"{split_path} has no rows in part {part!r}")
    df = load_lungseg(root)
    rows = df[df["name"].isin(set(held))]
    train_patients = set(split.loc[split["part"] != part, "patient_id"])
    if train_patients & set(rows["patient_id"]):
        raise ValueError(f"patients of part {part!r} also appear in other parts of {split_path}")
    predictor = create_lung_predictor(run_dir, runtime=runtime, batch_size=batch_size)
    per_image, failures = score_rows(predictor, rows)
    summary = summarise(per_image, n_boot=n_boot, seed=seed) if len(per_image) else {"all": {}, "per_source": {}}
    summary.update({"run": str(run_dir), "data": str(root), "part": part, "runtime": runtime,
                    "images": int(len(per_image)), "failures": failures,
                    "no_lungs": int(per_image["no_lungs"].sum()) if len(per_image) else 0})
    return SegmentationResult(summary, per_image, title=f"lung segmentation, {part} patients", failures=failures)
