"""Prediction stability: does the model keep its answer when the film changes in ways no reader can see?

A hospital sends the same chest X-ray through a PACS export (JPEG), a web viewer or a second scanner
read-out; the pixels change by about a grey level, the picture does not. A model whose class changes
there cannot be trusted, and an approximate runtime (``onnx-int8``, ``torch-bf16``) cannot be judged
without knowing how stable the exact one is. :func:`prediction_stability` re-predicts every image
after each :data:`PERTURBATIONS` entry and reports the share of images that keep their class (with a
patient-bootstrap CI), the largest and mean probability change, and which classes the flips came from.

``cxrdx evaluate --stability`` prints it for a run's held-out split; ``benchmarks/throughput.py`` puts
it beside the runtimes' agreement with fp32.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ..data.errors import ImageReadError
from ..registry import Registry
from ..stats.bootstrap import patient_mean_ci


@dataclass(frozen=True)
class Perturbation:
    description: str
    apply: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    """``(uint8 H x W, generator) -> uint8 H x W`` of the same size."""


def jpeg_reencode(grey: np.ndarray, quality: int = 95) -> np.ndarray:
    """The image after one JPEG round trip at ``quality`` (what a PACS or web export does)."""
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def gaussian_noise(grey: np.ndarray, rng: np.random.Generator, sigma: float = 1.0) -> np.ndarray:
    """Additive Gaussian noise of ``sigma`` grey levels (of 255), rounded back to 8 bits."""
    noisy = grey.astype(np.float32) + rng.standard_normal(grey.shape, dtype=np.float32) * sigma
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


PERTURBATIONS: Registry[Perturbation] = Registry("perturbations", describe=lambda p: p.description)
PERTURBATIONS.register("jpeg95", Perturbation("one JPEG round trip at quality 95", lambda g, rng: jpeg_reencode(g, 95)))
PERTURBATIONS.register("noise1", Perturbation("Gaussian noise, sigma 1 grey level of 255", lambda g, rng: gaussian_noise(g, rng, 1.0)))
DEFAULT_PERTURBATIONS = ("jpeg95", "noise1")


def agreement_summary(reference: np.ndarray, probs: np.ndarray, patients: np.ndarray, classes: list[str],
                      *, n_boot: int = 2000, seed: int = 0) -> dict:
    """How ``probs`` agree with ``reference`` (both ``[n, k]``): class agreement with a patient-bootstrap CI,
    probability changes (the largest; the mean over images of each image's largest), and the flips counted by the
    reference class."""
    ref_cls, new_cls = reference.argmax(1), probs.argmax(1)
    same = (ref_cls == new_cls).astype(np.float64)
    diff = np.abs(reference - probs)
    agreement = patient_mean_ci(same, patients, n_boot=n_boot, seed=seed)
    return {
        "images": int(len(same)),
        "class_agreement": agreement["mean"],
        "class_agreement_ci": agreement["ci"],
        "flips": int(len(same) - same.sum()),
        "flips_from": {c: int(((ref_cls == i) & (new_cls != i)).sum()) for i, c in enumerate(classes)},
        "max_abs_prob_diff": float(diff.max()) if len(diff) else None,
        "mean_max_abs_prob_diff": float(diff.max(axis=1).mean()) if len(diff) else None,
    }


def prediction_stability(predictor, images: Sequence, patients, *, read: Callable[[object], np.ndarray] | None = None,
                         perturbations=DEFAULT_PERTURBATIONS, seed: int = 0, n_boot: int = 2000, chunk: int = 64) -> dict:
    """Re-predict ``images`` after each perturbation; compare with the untouched images.

    ``images``: decoded uint8 images, or anything ``read`` turns into one (e.g. paths with
    :func:`cxrdx.data.io.read_image`); they are read ``chunk`` at a time, so memory stays bounded.
    ``predictor``: anything with ``predict_arrays`` and ``classes`` (every runtime's predictor).
    An image ``read`` cannot decode (:class:`~cxrdx.data.errors.ImageReadError`) is listed under ``skipped``.
    Returns ``{"images": n scored, "skipped": [...], "perturbations": {name: agreement_summary + "description"}}``.
    """
    chosen = {name: PERTURBATIONS.get(name) for name in perturbations}  # unknown names fail before any work
    patients = np.asarray(patients)
    if len(patients) != len(images):
        raise ValueError(f"{len(images)} images but {len(patients)} patient ids")
    read = read or (lambda x: x)
    reference, moved = [], {name: [] for name in chosen}
    used, skipped = [], []
    for start in range(0, len(images), chunk):
        greys, index = [], []
        for i in range(start, min(start + chunk, len(images))):
            try:
                greys.append(read(images[i]))
                index.append(i)
            except ImageReadError as exc:  # gone or broken since it was scored: skipped, never fatal
                skipped.append({"image": str(images[i]), "error": str(exc)})
        if not greys:
            continue
        used += index
        reference.append(predictor.predict_arrays(greys))
        for name, perturbation in chosen.items():
            moved[name].append(predictor.predict_arrays(
                [perturbation.apply(g, np.random.default_rng([seed, i])) for i, g in zip(index, greys)]))
    empty = np.zeros((0, len(predictor.classes)), np.float32)
    ref = np.concatenate(reference) if reference else empty
    rows = {name: {"description": perturbation.description,
                   **agreement_summary(ref, np.concatenate(moved[name]) if moved[name] else empty, patients[used],
                                       list(predictor.classes), n_boot=n_boot, seed=seed)}
            for name, perturbation in chosen.items()}
    return {"images": len(used), "skipped": skipped, "perturbations": rows}
