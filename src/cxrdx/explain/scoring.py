"""``cxrdx explain --score``: localisation scores of a model over every masked image of a dataset.

Writes ``scores.json`` (format in docs/explain.md) and the gallery; flags a
model whose mean lung energy is below ``ExplainConfig.flag_lung_energy``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd

from ..config import ExplainConfig
from ..data.io import ImageReadError, ReadLimits
from ..data.manifest import ManifestError, load_manifest
from ..models.hybrid import HybridModel
from ..progress import progress_bar
from ..stats.bootstrap import patient_mean_ci
from .cam import Explainer
from .gallery import write_gallery
from .localisation import area_fraction, energy_inside, load_mask, peak_inside

SCORES_FILE = "scores.json"
GALLERY_DIR = "gallery"
METRICS = {
    "lung_energy": ("lung_energy", "lung_area"),
    "pointing_game": ("pointing_game", "lung_area"),
    "lesion_energy": ("lesion_energy", "lesion_area"),
}


def masked_manifest(root: str | Path, classes: tuple[str, ...]) -> pd.DataFrame:
    """Rows of the dataset at ``root`` that have a lung mask (``lung_mask`` column, relative to ``root``)."""
    df = load_manifest(root, classes=classes)
    if "lung_mask" not in df.columns:
        raise ManifestError(f"{root}: the manifest has no lung_mask column, nothing to score")
    df = df[df["lung_mask"].notna()].reset_index(drop=True)
    if df.empty:
        raise ManifestError(f"{root}: no rows with a lung mask")
    return df


def _summary(frame: pd.DataFrame, settings: ExplainConfig) -> dict:
    out = {"n_images": int(len(frame)), "n_patients": int(frame["patient_id"].nunique())}
    for name, (column, chance_column) in METRICS.items():
        stats = patient_mean_ci(
            frame[column].to_numpy(dtype=float), frame["patient_id"].to_numpy(),
            n_boot=settings.bootstrap, level=settings.ci_level, seed=settings.seed,
        )
        usable = frame[column].notna()
        stats["chance"] = float(frame.loc[usable, chance_column].mean()) if usable.any() else None
        out[name] = stats
    return out


def _split_parts(run_dir: Path | None) -> dict[str, str]:
    split = run_dir / "split.csv" if run_dir else None
    if split is None or not split.is_file():
        return {}
    df = pd.read_csv(split, dtype={"patient_id": str})
    return dict(zip(df["relpath"], df["part"]))


def score_model(
    model: HybridModel,
    root: str | Path,
    out_dir: str | Path,
    *,
    method: str = "gradcam",
    settings: ExplainConfig | None = None,
    run_dir: str | Path | None = None,
    limits: ReadLimits | None = None,
    progress: bool = True,
) -> dict:
    """Explain every masked image under ``root``, score it, write ``scores.json`` + gallery; return the scores."""
    settings = settings or ExplainConfig()
    t0 = time.perf_counter()
    df = masked_manifest(root, tuple(model.classes))
    parts = _split_parts(Path(run_dir) if run_dir else None)
    explainer = Explainer(model, method, limits=limits, settings=settings)
    rows, items, failures = [], [], []
    with progress_bar(total=len(df), description=f"explain {method}", enabled=progress) as bar:
        for row in df.itertuples(index=False):
            try:
                exp = explainer(row.image)
                lung = load_mask(Path(root) / row.lung_mask, exp.heatmap.shape)
                lesion_path = getattr(row, "lesion_mask", None)
                has_lesion = isinstance(lesion_path, str) and lesion_path
                lesion = load_mask(Path(root) / lesion_path, exp.heatmap.shape) if has_lesion else None
            except (ImageReadError, OSError) as exc:
                failures.append({"image": row.relpath, "error": str(exc)})
                bar.advance()
                continue
            lung_energy = energy_inside(exp.heatmap, lung)
            record = {
                "image": row.relpath, "patient_id": row.patient_id, "label": row.label,
                "source": getattr(row, "source", None), "part": parts.get(row.relpath),
                "predicted": exp.predicted, "probability": exp.probabilities[exp.predicted],
                "correct": exp.predicted == row.label,
                "lung_energy": lung_energy, "pointing_game": float(peak_inside(exp.heatmap, lung)),
                "lung_area": area_fraction(lung),
                "lesion_energy": energy_inside(exp.heatmap, lesion) if lesion is not None else math.nan,
                "lesion_area": area_fraction(lesion) if lesion is not None else math.nan,
            }
            rows.append(record)
            items.append({"explanation": exp, "label": row.label, "image": row.relpath, "lung": lung,
                          "lesion": lesion, "lung_energy": lung_energy})
            bar.advance()
    if not rows:
        raise ManifestError(f"none of the {len(df)} masked images could be explained")
    frame = pd.DataFrame(rows)
    overall = _summary(frame, settings)
    per_class = {label: _summary(frame[frame["label"] == label], settings) for label in model.classes if (frame["label"] == label).any()}
    mean_lung = overall["lung_energy"]["mean"]
    flagged = mean_lung is not None and mean_lung < settings.flag_lung_energy
    reason = (
        f"heat lies mostly outside the lungs: mean lung energy {mean_lung:.2f} < {settings.flag_lung_energy:.2f} "
        f"(uniform heat would give {overall['lung_energy']['chance']:.2f})" if flagged else ""
    )
    out = Path(out_dir)
    gallery = write_gallery(items, out / GALLERY_DIR, per_group=settings.gallery_per_group,
                            image_weight=settings.image_weight, max_side=settings.overlay_max_side)
    info = model.info
    scores = {
        "model": {"run_dir": str(run_dir) if run_dir else None, "backbone": info.backbone, "head": info.head,
                  "weights": info.weights, "finetuned": bool(info.extra.get("finetuned")), "classes": model.classes},
        "method": method,
        "target_layer": model.spec.target_layer,
        "data_root": str(root),
        "n_images": int(len(frame)),
        "n_patients": int(frame["patient_id"].nunique()),
        "ci_level": settings.ci_level,
        "bootstrap": {"resamples": settings.bootstrap, "unit": "patient", "seed": settings.seed},
        "overall": overall,
        "per_class": per_class,
        "per_source": {str(s): _summary(frame[frame["source"] == s], settings) for s in sorted(frame["source"].dropna().unique())},
        "flag_threshold": settings.flag_lung_energy,
        "flagged": bool(flagged),
        "flag_reason": reason,
        "parts": {str(k): int(v) for k, v in frame["part"].fillna("unknown").value_counts().items()},
        "gallery": gallery,
        "failures": failures,
        "seconds": round(time.perf_counter() - t0, 1),
        "per_image": json.loads(frame.to_json(orient="records")),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / SCORES_FILE).write_text(json.dumps(scores, indent=2))
    return scores
