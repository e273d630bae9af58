"""One DICOM image in, its result objects out: checks, prediction, Grad-CAM, SR + Secondary Capture.

:func:`skip_reason` decides from a few header tags whether an instance is
something the model may read (a CR/DX chest image, frontal); the reason it
returns is safe to log (it names tag values like the modality, never a
patient attribute).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ..data.io import CorruptImageError, ReadLimits, read_image
from .results import DISCLAIMER, OperatingPoint, ResultObjects, build_overlay, build_report

MODALITIES = ("CR", "DX")
CHEST_PARTS = ("CHEST", "THORAX", "LUNG", "CHEST_ABDOMEN")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD")
HEADER_TAGS = ("Modality", "BodyPartExamined", "ViewPosition", "SOPClassUID", "SOPInstanceUID", "Manufacturer")


def skip_reason(tags: Mapping[str, object] | Dataset) -> str | None:
    """``None`` if the instance should be analysed, else a one-line reason (no patient data in it)."""
    get = tags.get
    modality = str(get("Modality") or "").upper()
    if modality not in MODALITIES:
        return f"modality {modality or 'missing'} is not {'/'.join(MODALITIES)}"
    if str(get("Manufacturer") or "") == "cxrdx":
        return "a cxrdx result object"
    part = str(get("BodyPartExamined") or "").upper()
    if part and part not in CHEST_PARTS:
        return f"body part {part} is not chest"
    view = str(get("ViewPosition") or "").upper()
    if view in LATERAL_VIEWS:
        return f"view position {view}: the model reads frontal views only"
    return None


def read_header(data: bytes) -> Dataset:
    """The dataset without its pixel data (for the objects' patient / study / reference attributes)."""
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom's text may quote values: never pass it on
        raise CorruptImageError(f"not a readable DICOM file ({type(exc).__name__})", source="instance") from None


@dataclass
class Analysis:
    probabilities: dict[str, float]
    predicted: str
    objects: ResultObjects


class Analyzer:
    """A loaded model (predictor + Grad-CAM) that turns source DICOM bytes into :class:`ResultObjects`."""

    def __init__(
        self, run_dir: str | Path, *, runtime: str = "torch", operating_point: OperatingPoint | None = None,
        method: str = "gradcam", overlay: bool = True, limits: ReadLimits | None = None, threads: int | None = None,
    ):
        """``threads``: intra-op threads for torch and ONNX Runtime (None = all cores). On a busy CPU, 1 avoids
        OpenMP workers spinning against other processes (on the shared 2-core test machine: 0.5 s an image with 1
        thread, 20 s with 2)."""
        from ..explain import Explainer
        from ..inference.runtimes import create_predictor
        from ..models.run import load_run, model_identity

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.run_dir = Path(run_dir)
        self.identity = model_identity(self.run_dir)
        self.model = load_run(self.run_dir)  # Grad-CAM always runs on torch; the predictor may be ONNX Runtime
        self.limits = limits or ReadLimits()
        self.predictor = create_predictor(self.run_dir, runtime, model=self.model, limits=self.limits, threads=threads)
        self.explainer = Explainer(self.model, method, limits=self.limits) if overlay else None
        self.operating_point = operating_point or OperatingPoint()

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    def heatmap_image(self, grey: np.ndarray, predicted: str, probability: float):
        """Grad-CAM for the predicted class, drawn over the X-ray with the disclaimer in the caption."""
        from ..explain.overlay import make_overlay

        exp = self.explainer(grey, target=predicted)
        caption = f"{DISCLAIMER} | predicted {predicted} {probability:.0%} | {self.explainer.method.display} for {predicted}"
        return make_overlay(grey, exp.heatmap, caption, image_weight=self.explainer.settings.image_weight,
                            max_side=self.explainer.settings.overlay_max_side)

    def analyse(self, data: bytes, header: Dataset | None = None) -> Analysis:
        """Source DICOM bytes -> probabilities and the SR (+ SC). Raises :class:`ImageReadError` if unreadable."""
        header = header if header is not None else read_header(data)
        grey = read_image(data, name="instance", limits=self.limits)
        probs = self.predictor.predict_arrays([grey])[0]
        probabilities = {c: float(p) for c, p in zip(self.classes, probs)}
        predicted = self.classes[int(np.argmax(probs))]
        report = build_report(header, probabilities, model_id=self.identity.id, model_version=self.identity.version,
                              run_name=self.identity.run, operating_point=self.operating_point)
        overlay = None
        if self.explainer is not None:
            overlay = build_overlay(header, self.heatmap_image(grey, predicted, probabilities[predicted]),
                                    model_version=self.identity.version)
        return Analysis(probabilities, predicted, ResultObjects(report, overlay))
