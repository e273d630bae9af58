"""ONNX Runtime inference with the same decode / preprocess path as :class:`~cxrdx.inference.predictor.Predictor`.

:class:`OnnxPredictor` subclasses ``Predictor`` and replaces only the model
call, so PNG / JPEG / DICOM reading, size limits, resizing, normalisation,
batching and per-file error handling are the very same code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.io import ReadLimits
from ..data.transforms import build_transform
from ..features.roi import RegionOfInterest, RoiSetting
from ..models.onnx_graph import session_options
from ..models.run import INFO_FILE, RunError, model_identity, read_info
from .onnx_export import INPUT_NAME, META_KEY, ONNX_FILE, OUTPUT_NAME, POOLED_NAME
from .predictor import Predictor


class OnnxModelError(RunError):
    """No ONNX file, or one that no longer matches the run folder's weights."""


class OnnxPredictor(Predictor):
    """Batched, failure-tolerant prediction with ONNX Runtime on the CPU."""

    read_ahead = True

    def __init__(self, onnx_path: str | Path, limits: ReadLimits | None = None, batch_size: int = 16,
                 threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise OnnxModelError(f"{self.path} not found: run `cxrdx export --onnx {self.path.parent}` first")
        self.session = ort.InferenceSession(str(self.path), session_options(threads), providers=["CPUExecutionProvider"])
        raw = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if raw is None:
            raise OnnxModelError(f"{self.path} was not written by `cxrdx export --onnx` (no cxrdx metadata)")
        self.meta = json.loads(raw)
        outputs = {o.name for o in self.session.get_outputs()}
        self.guard_features = POOLED_NAME in outputs and "quantization" not in self.meta
        """The graph also gives the input guard's pooled features, and they are exact (fp32: equal to torch's to
        ~1e-5; an int8 graph's are not, so the guard keeps the torch backbone there; exports from before
        ``pooled_features`` too)."""
        self.model = None
        self.limits = limits or ReadLimits()
        self.batch_size = batch_size
        self.transform = build_transform(int(self.meta["image_size"]), tuple(self.meta["mean"]), tuple(self.meta["std"]))
        self.roi = RegionOfInterest.shared(RoiSetting.from_dict(self.meta.get("roi")), threads=threads)
        """The region of interest recorded at export (the run folder's ``model.json`` wins in :meth:`from_run_dir`)."""

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, file: str = ONNX_FILE, **kwargs) -> "OnnxPredictor":
        """The run folder's ``model.onnx`` (or ``file``, e.g. ``model.int8.onnx``), refused if the weights changed
        since it was exported."""
        run_dir = Path(run_dir)
        path = run_dir / file
        how = f"cxrdx export --onnx {run_dir}" + ("" if file == ONNX_FILE else " --quantize int8")
        if not path.is_file():
            raise OnnxModelError(f"{path} not found: run `{how}` first")
        predictor = cls(path, **kwargs)
        current = model_identity(run_dir).version
        if predictor.meta.get("model_version") != current:
            raise OnnxModelError(
                f"{path} was exported from weights {predictor.meta.get('model_version')} but {run_dir} now holds "
                f"{current}: run `{how}` again"
            )
        predictor.roi = RegionOfInterest.from_model_info(read_info(run_dir / INFO_FILE)[0], threads=kwargs.get("threads"))
        return predictor

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    def probabilities_and_pooled(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and the guard's pooled features from one run (only where :attr:`guard_features`)."""
        x = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        probs, feats = self.session.run([OUTPUT_NAME, POOLED_NAME], {INPUT_NAME: x})
        return probs, feats
