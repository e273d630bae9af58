"""The model behind the server: decode an upload once, predict (torch or ONNX Runtime), explain with Grad-CAM.

:meth:`ModelService.prepare` (decode + resize + normalise) runs in the server's worker threads, at most
``serve.max_concurrent_decodes`` at once (the app holds the slots); only the model call itself is
serialised by a lock (one inference at a time uses all intra-op threads, which on a small CPU server
beats running several at once). So a slow or hostile decode never delays another user's model call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import DataConfig, ExplainConfig, ServeConfig
from ..data.io import ImageReadError, ReadLimits, read_image
from ..features.roi import RoiInfo
from ..inference.predictor import Predictor
from ..inference.runtimes import RUNTIMES, create_predictor
from ..models.run import ModelIdentity, load_run, model_identity


@dataclass
class Scored:
    probabilities: dict[str, float]
    predicted: str
    roi: dict | None = None
    """The region of interest the model saw (:meth:`RoiInfo.to_dict`); None for whole-image models."""


class ModelService:
    def __init__(self, cfg: ServeConfig, data_cfg: DataConfig | None = None):
        RUNTIMES.check(cfg.runtime)
        data_cfg = data_cfg or DataConfig()
        self.run_dir = Path(cfg.model_dir)
        self.runtime = cfg.runtime
        self.limits = ReadLimits.from_config(data_cfg, max_file_bytes=cfg.max_upload_bytes)
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

    def prepare(self, data: bytes) -> tuple[torch.Tensor, RoiInfo | None]:
        """Upload bytes -> the model's ``3xSxS`` input (decode + region of interest + resize + normalise; no lock
        held) and the region it shows (the predictor's one preprocessing path, as ``cxrdx predict``)."""
        return self.predictor.prepare(self.decode(data))

    def prepare_for_explain(self, data: bytes) -> np.ndarray:
        """Upload bytes -> greyscale no larger than the overlay (Grad-CAM maps are made at this size)."""
        grey = self.decode(data)
        side = ExplainConfig().overlay_max_side
        h, w = grey.shape
        if max(h, w) > side:
            scale = side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            grey = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BOX))
        return grey

    def score(self, x: torch.Tensor | tuple[torch.Tensor, RoiInfo | None]) -> Scored:
        """The model call on one prepared input (or :meth:`prepare`'s pair): the only step that holds the model lock."""
        x, roi = x if isinstance(x, tuple) else (x, None)
        with self._model_lock:
            probs, refused = self.predictor.answer(x[None], ["upload"])  # the input guard's refusal, if any
        if refused[0] is not None:
            raise refused[0]  # ImageReadError: 422 not_a_chest_image
        probs = probs[0]
        classes = self.classes
        return Scored({c: float(p) for c, p in zip(classes, probs)}, classes[int(np.argmax(probs))],
                      None if roi is None else roi.to_dict())

    def predict(self, grey: np.ndarray) -> Scored:
        return self.score(self.predictor.prepare(grey))

    def explain(self, grey: np.ndarray, method: str = "gradcam"):
        """Grad-CAM on the torch model (the explanation's probabilities are the torch model's)."""
        from ..explain.cam import explain

        with self._model_lock:
            if self.predictor.screen is not None:  # refuse what the guard refuses before explaining it
                self.predictor.screen.check(self.predictor.tensor(grey)[None], ["upload"])
            return explain(self.model, grey, method=method, limits=self.limits)
