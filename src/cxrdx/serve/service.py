"""The model behind the server: decode an upload once, predict (torch or ONNX Runtime), explain with Grad-CAM.

Decoding runs in parallel in the server's worker threads; the model call is
serialised by a lock (one inference at a time uses all intra-op threads, which
on a small CPU server beats running several at once).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig, ServeConfig
from ..data.io import ImageReadError, ReadLimits, read_image
from ..inference.predictor import Predictor
from ..inference.runtimes import RUNTIMES, create_predictor
from ..models.run import ModelIdentity, load_run, model_identity


@dataclass
class Scored:
    probabilities: dict[str, float]
    predicted: str


class ModelService:
    def __init__(self, cfg: ServeConfig, data_cfg: DataConfig | None = None):
        RUNTIMES.check(cfg.runtime)
        data_cfg = data_cfg or DataConfig()
        self.run_dir = Path(cfg.model_dir)
        self.runtime = cfg.runtime
        self.limits = ReadLimits(max_pixels=data_cfg.max_pixels, max_file_bytes=cfg.max_upload_bytes)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.model = load_run(self.run_dir)  # also for Grad-CAM, which always runs on torch
        self.identity: ModelIdentity = model_identity(self.run_dir)
        self.predictor: Predictor = create_predictor(self.run_dir, cfg.runtime, model=self.model, limits=self.limits,
                                                     threads=cfg.threads)
        self._model_lock = threading.Lock()
        self.predictor.predict_arrays([np.full((256, 256), 128, np.uint8)])  # warm-up: the first request is not slow

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    @property
    def can_explain(self) -> bool:
        try:
            import cxrdx.explain.cam  # noqa: F401
        except ImportError:
            return False
        return True

    def decode(self, data: bytes) -> np.ndarray:
        """Upload bytes -> ``HxW`` uint8; anything unreadable is an :class:`ImageReadError` (a 4xx, never a 500)."""
        try:
            return read_image(data, name="upload", limits=self.limits)
        except ImageReadError:
            raise
        except Exception as exc:  # noqa: BLE001 - a decoder crashing on hostile bytes is still a bad input
            raise ImageReadError(f"cannot decode the image ({type(exc).__name__})", source="upload") from None

    def predict(self, grey: np.ndarray) -> Scored:
        with self._model_lock:
            probs = self.predictor.predict_arrays([grey])[0]
        classes = self.classes
        return Scored({c: float(p) for c, p in zip(classes, probs)}, classes[int(np.argmax(probs))])

    def explain(self, grey: np.ndarray, method: str = "gradcam"):
        """Grad-CAM on the torch model (the explanation's probabilities are the torch model's)."""
        from ..explain.cam import explain

        with self._model_lock:
            return explain(self.model, grey, method=method, limits=self.limits)
