"""Source confounding: does the model recognise the hospital instead of the disease?

Two checks. (1) The confusion matrix of the out-of-fold predictions inside
each ``source`` archive. (2) A shortcut control: the same fold models score
the test images with the lung region blacked out (the radiologist lung mask
where there is one, otherwise the lung segmenter's mask when ``data.lung_model``
names one, otherwise a central box). Without lungs there is no
disease to see; accuracy far above chance means the model reads something
else (archive, scanner, text markers, borders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix

BLACKOUT_VARIANT = "nolung-v1"
"""Feature-cache variant of the lung-blacked-out images (mask where present, else the central box)."""
CENTRAL_BOX = (0.15, 0.85, 0.15, 0.85)
"""Fallback lung region without a mask: rows 15-85 %, columns 15-85 % of the image."""
BORDER_VARIANT = "border12-v1"
"""Feature-cache variant of the border-only images (:func:`border_only_fn`)."""
BORDER_FRACTION = 0.12
"""Border-only control: the frame kept is this share of the image height (top, bottom) and width (sides)."""
BORDER_GREY = 128
"""Grey value everything inside the frame is set to."""
SCORED_SETTINGS = {
    "lungs_blacked_out": "With the lungs blacked out",
    "border_only": f"With only the image border kept (a {BORDER_FRACTION:.0%} frame)",
}
"""Verdict wording when the same fold models score an extra feature set."""
FAR_ABOVE_CHANCE = 0.10
"""Blacked-out accuracy whose CI lower bound beats chance by more than this is reported as a shortcut."""


def lung_region(shape: tuple[int, int], mask_path: str | Path | None) -> np.ndarray:
    """Boolean ``H x W`` lung region: the mask file resized to ``shape``, or the central box."""
    h, w = shape
    if mask_path is not None and Path(mask_path).is_file():
        with Image.open(mask_path) as im:
            mask = np.asarray(im.convert("L").resize((w, h), Image.NEAREST)) > 127
        if mask.any():
            return mask
    region = np.zeros((h, w), dtype=bool)
    r0, r1, c0, c1 = CENTRAL_BOX
    region[int(r0 * h) : int(r1 * h), int(c0 * w) : int(c1 * w)] = True
    return region


def blackout_fn(data_root: str | Path, lungs: Callable[[np.ndarray], np.ndarray | None] | None = None):
    """An ``image_fn`` for :func:`cxrdx.features.cache.extract_features` that blacks out the lungs: the row's
    radiologist mask; else ``lungs(grey)`` (a lung segmenter's mask, None where it finds none); else the central box."""
    root = Path(data_root)

    def fn(grey: np.ndarray, row: pd.Series) -> np.ndarray:
        rel = row.get("lung_mask") if hasattr(row, "get") else None
        mask_path = root / rel if isinstance(rel, str) and rel else None
        region = None
        if lungs is not None and (mask_path is None or not mask_path.is_file()):
            region = lungs(grey)
        if region is None or not region.any():
            region = lung_region(grey.shape, mask_path)
        out = grey.copy()
        out[region] = 0
        return out

    return fn


def border_only(grey: np.ndarray, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Keep only a frame of ``fraction`` of the image side at each border; grey out everything inside it."""
    h, w = grey.shape[:2]
    dy, dx = max(1, int(round(fraction * h))), max(1, int(round(fraction * w)))
    out = grey.copy()
    out[dy : h - dy, dx : w - dx] = BORDER_GREY
    return out


def border_only_fn(data_root: str | Path | None = None):
    """An ``image_fn`` for :func:`cxrdx.features.cache.extract_features`: the border-only control image."""

    def fn(grey: np.ndarray, row: pd.Series) -> np.ndarray:
        return border_only(grey)

    return fn


def region_kinds(manifest: pd.DataFrame, data_root: str | Path, segmenter: bool = False) -> dict[str, int]:
    """How many rows are blacked out with a radiologist mask vs the lung segmenter's mask (``segmenter``; the
    central box where it finds no lungs) vs the central box."""
    if "lung_mask" in manifest.columns:
        has = manifest["lung_mask"].apply(lambda r: isinstance(r, str) and (Path(data_root) / r).is_file())
    else:
        has = pd.Series(False, index=manifest.index)
    rest = int((~has).sum())
    return {"mask": int(has.sum()), "segmenter": rest if segmenter else 0, "central_box": 0 if segmenter else rest}


def per_source(manifest: pd.DataFrame, probs: np.ndarray, classes: tuple[str, ...]) -> list[dict]:
    """Confusion matrix, accuracy and label counts of the predictions inside each ``source``."""
    if "source" not in manifest.columns:
        return []
    y = manifest["target"].to_numpy()
    pred = np.asarray(probs).argmax(1)
    labels = list(range(len(classes)))
    out = []
    for source, idx in manifest.groupby(manifest["source"].fillna("unknown")).indices.items():
        out.append({
            "source": str(source),
            "n": int(len(idx)),
            "labels": {c: int((y[idx] == k).sum()) for k, c in enumerate(classes)},
            "accuracy": float(accuracy_score(y[idx], pred[idx])),
            "confusion_matrix": confusion_matrix(y[idx], pred[idx], labels=labels).tolist(),
        })
    return out


def chance_levels(y: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy of always answering the majority class, and of guessing uniformly."""
    counts = np.bincount(np.asarray(y, dtype=int), minlength=n_classes)
    return {"majority": float(counts.max() / max(counts.sum(), 1)), "uniform": 1.0 / n_classes}


def shortcut_verdict(accuracy: float, ci: list | None, chance: float, with_lungs: float | None = None,
                     setting: str = "With the lungs blacked out",
                     cues: str = "cues outside the lungs (archive, scanner, text markers, borders)") -> dict:
    """Plain-words verdict: is accuracy without lungs far above chance (CI lower bound > chance + margin)?
    ``within_ci_of_chance``: does the CI reach down to chance (the control "falls to chance")?"""
    low = ci[0] if ci and ci[0] is not None else accuracy
    far = low - chance > FAR_ABOVE_CHANCE
    within = low <= chance
    ref = f"chance {chance:.3f}" + (f"; {with_lungs:.3f} with lungs" if with_lungs is not None else "")
    if far:
        text = (f"{setting} the model still scores accuracy {accuracy:.3f} (95% CI lower bound {low:.3f}), far above "
                f"chance ({ref}). It relies on {cues}: its accuracy is not evidence that it sees COVID-19.")
    else:
        text = (f"{setting} accuracy is {accuracy:.3f} ({ref}): not far above chance, "
                "so no strong sign of a shortcut outside the lungs in this control.")
    text += (" It falls to chance within its CI." if within else
             f" It does not fall to chance within its CI (lower bound {low:.3f} > {chance:.3f}).")
    return {"far_above_chance": bool(far), "within_ci_of_chance": bool(within), "margin": FAR_ABOVE_CHANCE, "text": text}
