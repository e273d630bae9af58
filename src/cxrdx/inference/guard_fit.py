"""Fit and check the input guard (:mod:`cxrdx.inference.guard`) on real data.

Each modality's manifest is split by patient (the same split as ``cxrdx train``
with the same fractions and seed): the guard is fitted and calibrated on the
train + validation patients (thresholds from patient-grouped out-of-fold
distances, worst source), and the test part (never seen by the guard) measures
routing and false refusals, per modality and per source.
Out-of-distribution checks: the pictures that ship with scikit-image
(``skimage.data``: photographs, textures, microscopy, text, faces ...) and
synthetic noise, all read through the same decoder as a user's file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..data.io import read_image
from ..data.splits import train_val_test_split
from ..features.cache import extract_features
from ..features.roi import RoiSetting
from ..models.hybrid import HybridModel
from .guard import DEFAULT_FALSE_REFUSAL, InputGuard, Verdict, pooled

SKIMAGE_PICTURES = (
    "astronaut", "brick", "camera", "cat", "checkerboard", "clock", "coffee", "coins", "colorwheel", "grass",
    "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket",
    "text", "binary_blobs", "microaneurysms", "cell", "shepp_logan_phantom",
)
"""``skimage.data`` pictures bundled with the wheel (no download). ``lfw_subset`` (200 small faces) is added."""


@dataclass
class ModalityRows:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    features: dict[str, np.ndarray]
    """part -> ``[N, C]`` pooled features of the readable rows (``rows[part]`` has the same order)."""
    rows: dict[str, pd.DataFrame]


def modality_rows(model: HybridModel, df: pd.DataFrame, cache_dir: str | Path, *, test_fraction: float = 0.2,
                  val_fraction: float = 0.15, seed: int = 42, progress: bool = False) -> ModalityRows:
    train, val, test = train_val_test_split(df, test_fraction, val_fraction, seed)
    feats, rows = {}, {}
    for name, part in (("train", train), ("val", val), ("test", test)):
        fs = extract_features(model, part, cache_dir, progress=progress)
        feats[name], rows[name] = pooled(fs.features), fs.manifest
    return ModalityRows(train, val, test, feats, rows)


def fit_guard(model: HybridModel, parts: dict[str, ModalityRows], *, false_refusal: float = DEFAULT_FALSE_REFUSAL,
              method: str = "knn") -> InputGuard:
    """A guard fitted on each modality's train + validation rows (patients and sources from their manifests)."""
    info = model.info
    fitting = {m: pd.concat([p.rows["train"], p.rows["val"]], ignore_index=True) for m, p in parts.items()}
    column = lambda m, name: fitting[m][name].astype(str).to_numpy() if name in fitting[m].columns else None  # noqa: E731
    return InputGuard.fit({m: np.concatenate([p.features["train"], p.features["val"]]) for m, p in parts.items()},
                          groups={m: column(m, "patient_id") for m in parts}, sources={m: column(m, "source") for m in parts},
                          backbone=info.backbone, weights_tag=info.weights_tag, image_size=info.image_size,
                          false_refusal=false_refusal, method=method, roi=RoiSetting.from_model_info(info).key)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def library_pictures() -> dict[str, list[tuple[str, np.ndarray]]]:
    """``{"skimage": [...], "skimage-faces": [...]}``: (name, uint8 array as shipped), decoded like a user's PNG."""
    import skimage.data as sd

    pics = []
    for name in SKIMAGE_PICTURES:
        arr = getattr(sd, name)()
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8) * 255
        elif arr.dtype != np.uint8:
            arr = (255 * (arr.astype(np.float64) - arr.min()) / max(float(np.ptp(arr)), 1e-9)).astype(np.uint8)
        pics.append((name, arr))
    left, right, _ = sd.stereo_motorcycle()
    pics += [("motorcycle_left", left), ("motorcycle_right", right)]
    faces = [(f"lfw_{i}", (255 * f / max(float(f.max()), 1e-9)).astype(np.uint8)) for i, f in enumerate(sd.lfw_subset())]
    return {"skimage": pics, "skimage-faces": faces}


def noise_images(n: int = 100, seed: int = 0, side: int = 256) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Synthetic noise: uniform, Gaussian, salt-and-pepper, smoothed (blobs), colour and constant-plus-noise images."""
    rng = np.random.default_rng(seed)
    kinds: dict[str, Callable[[], np.ndarray]] = {
        "uniform": lambda: rng.integers(0, 256, (side, side), dtype=np.uint8),
        "gaussian": lambda: np.clip(rng.normal(128, 40, (side, side)), 0, 255).astype(np.uint8),
        "salt-pepper": lambda: (rng.random((side, side)) < rng.uniform(0.05, 0.5)).astype(np.uint8) * 255,
        "smooth": lambda: _smooth(rng, side),
        "colour": lambda: rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
    }
    out = []
    for i in range(n):
        kind = list(kinds)[i % len(kinds)]
        out.append((f"noise-{kind}-{i}", kinds[kind]()))
    return {"noise": out}


def _smooth(rng: np.random.Generator, side: int) -> np.ndarray:
    small = rng.random((int(rng.integers(4, 32)),) * 2)
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(img)


@torch.inference_mode()
def array_features(model: HybridModel, arrays: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Pooled backbone features of pictures given as arrays, each written to PNG and read back like an upload
    (and prepared as the model's predictor prepares it: region of interest, resize, normalisation)."""
    from .predictor import Predictor

    tensor = Predictor(model).tensor
    out = []
    for start in range(0, len(arrays), batch_size):
        batch = torch.stack([tensor(read_image(_png(a), name="picture")) for a in arrays[start:start + batch_size]])
        out.append(pooled(model.forward_features(batch)))
    return np.concatenate(out) if out else np.zeros((0, 0))


def _rate(flags: list[bool]) -> dict:
    n = len(flags)
    k = int(sum(flags))
    lo, hi = _wilson(k, n)
    return {"n": n, "count": k, "rate": (k / n) if n else None, "ci95": [lo, hi]}


def _wilson(k: int, n: int, z: float = 1.959964) -> tuple[float | None, float | None]:
    if n == 0:
        return None, None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def evaluate_guard(guard: InputGuard, parts: dict[str, ModalityRows], ood: dict[str, np.ndarray],
                   source_column: str = "source") -> dict:
    """Routing of the held-out test rows (per modality and per source) and refusal of each OOD group."""
    report: dict = {"held_out": {}, "out_of_distribution": {}}
    for m, p in parts.items():
        verdicts: list[Verdict] = guard.decide(p.features["test"])
        rows = p.rows["test"]
        entry = {"routed_correctly": _rate([v.modality == m for v in verdicts]),
                 "refused": _rate([v.refused for v in verdicts]),
                 "routed_to_other_modality": _rate([v.modality not in (None, m) for v in verdicts])}
        if source_column in rows.columns:
            entry["refused_per_source"] = {
                str(src): _rate([verdicts[i].refused for i in np.flatnonzero((rows[source_column] == src).to_numpy())])
                for src in sorted(rows[source_column].astype(str).unique())
            }
        report["held_out"][m] = entry
    for group, feats in ood.items():
        verdicts = guard.decide(feats) if len(feats) else []
        report["out_of_distribution"][group] = {
            "refused": _rate([v.refused for v in verdicts]),
            "accepted_as": {m: int(sum(v.modality == m for v in verdicts)) for m in guard.modalities},
        }
    return report


def ood_features(model: HybridModel, *, noise: int = 100, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """``(group -> features, group -> names)`` for the library pictures and the noise images."""
    groups = {**library_pictures(), **noise_images(noise, seed)}
    feats = {g: array_features(model, [a for _, a in items]) for g, items in groups.items()}
    return feats, {g: [n for n, _ in items] for g, items in groups.items()}
