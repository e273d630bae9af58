"""One model behind the server: decode an upload once, predict (torch or ONNX Runtime), explain with Grad-CAM.

:meth:`ModelService.prepare` (decode + resize + normalise) runs in the server's worker threads, at most
``serve.max_concurrent_decodes`` at once (the app holds the slots, shared by all models); only the model
call itself is serialised, by one lock per model (one inference at a time uses all intra-op threads, which
on a small CPU server beats running several at once; an X-ray and a CT model do not wait for each other).
So a slow or hostile decode never delays another user's model call. Several models and the routing between
them: :mod:`cxrdx.serve.routing`.
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
from ..features.roi import RoiInfo, RoiSetting
from ..inference.guard import Screen, Verdict, pooled
from ..models.outputs import probabilities
from ..inference.predictor import Predictor
from ..inference.runtimes import RUNTIMES, create_predictor
from ..models.run import INFO_FILE, ModelIdentity, load_run, model_identity, read_info


@dataclass
class Scored:
    probabilities: dict[str, float]
    predicted: str
    roi: dict | None = None
    """The region of interest the model saw (:meth:`RoiInfo.to_dict`); None for whole-image models."""


@dataclass
class Examined:
    """What :meth:`ModelService.examine` kept of an ONNX Runtime pass: the examining model's probabilities."""

    service: str
    probabilities: np.ndarray


class ModelService:
    def __init__(self, cfg: ServeConfig, data_cfg: DataConfig | None = None, run_dir: str | Path | None = None):
        """The model in ``run_dir`` (default: ``cfg.model_dir``, which must then name one run)."""
        RUNTIMES.check(cfg.runtime)
        data_cfg = data_cfg or DataConfig()
        if run_dir is None:
            dirs = cfg.model_dirs()
            if len(dirs) != 1:
                raise ValueError(f"serve.model_dir names {len(dirs)} runs; pass run_dir (or use ModelPool)")
            run_dir = dirs[0]
        self.run_dir = Path(run_dir)
        self.runtime = cfg.runtime
        self.limits = ReadLimits.from_config(data_cfg, max_file_bytes=cfg.max_upload_bytes)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.model = load_run(self.run_dir)  # also for Grad-CAM, which always runs on torch
        self.identity: ModelIdentity = model_identity(self.run_dir)
        self._backbone_stored = read_info(self.run_dir / INFO_FILE)[1]  # backbone weights of its own in the run
        self.predictor: Predictor = create_predictor(self.run_dir, cfg.runtime, model=self.model, limits=self.limits,
                                                     threads=cfg.threads)
        self._model_lock = threading.Lock()
        self.predictor.predict_arrays([np.full((256, 256), 128, np.uint8)])  # warm-up: the first request is not slow

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    @property
    def name(self) -> str:
        """What a client names this model by (``?model=``): the run folder's name."""
        return self.identity.run

    @property
    def modality(self) -> str:
        """``xray``, ``ct`` or ``xray+ct`` (from ``model.json``)."""
        return self.model.info.modality

    @property
    def feature_key(self) -> tuple | None:
        """Models with equal keys compute the same backbone map from the same prepared input (frozen backbone from
        the same weights, same input size and region of interest); None: a backbone of its own (fine-tuned, or
        weights from a file)."""
        info = self.model.info
        if info.extra.get("finetuned") or info.weights not in ("imagenet", "none") or self._backbone_stored:
            return None
        return info.backbone, info.weights, info.weights_tag, info.image_size, RoiSetting.from_model_info(info).key

    @property
    def accepts(self) -> tuple[str, ...]:
        return tuple(self.modality.split("+"))

    @property
    def screen(self) -> Screen | None:
        """The run's input guard bound to its model (None: the run has no ``guard.json``)."""
        return self.predictor.screen

    @property
    def roi(self) -> dict | None:
        """The region of interest the model was trained with (no file paths); None for the whole image."""
        setting = RoiSetting.from_model_info(self.model.info)
        if setting.is_identity:
            return None
        return {"roi": setting.roi, "intensity": setting.intensity, "margin": setting.margin, "fit": setting.fit}

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

    def prepare_grey(self, grey: np.ndarray) -> tuple[torch.Tensor, RoiInfo | None]:
        """:meth:`prepare` for an image decoded already (one decode, several models)."""
        return self.predictor.prepare(grey)

    def examine(self, x: torch.Tensor | tuple[torch.Tensor, RoiInfo | None]) -> tuple[Verdict, "torch.Tensor | Examined"]:
        """The input guard's verdict on one prepared input, and what it came from (model lock held): the backbone
        map (torch), or with an fp32 ONNX graph that gives the guard's features this model's whole answer
        (:class:`Examined`; one backbone pass). Only for a model with a guard; :meth:`score` answers from either."""
        x = x[0] if isinstance(x, tuple) else x
        with self._model_lock:
            if self.predictor.guard_features:
                probs, feats = self.predictor.probabilities_and_pooled(x[None])
                return self.screen.guard.decide(feats)[0], Examined(self.name, probs)
            fmap = self.screen.features(x[None])
            return self.screen.guard.decide(pooled(fmap))[0], fmap

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

    def score(self, x: torch.Tensor | tuple[torch.Tensor, RoiInfo | None], fmap: torch.Tensor | None = None) -> Scored:
        """The model call on one prepared input (or :meth:`prepare`'s pair): the only step that holds the model lock.

        ``fmap``: the backbone map of ``x`` (this model's, or one with the same :attr:`feature_key`) from
        :meth:`examine`, whose guard verdict the caller has acted on (the guard is not asked again; the torch
        runtime answers from the map without a second backbone pass)."""
        x, roi = x if isinstance(x, tuple) else (x, None)
        with self._model_lock:
            if fmap is None:
                probs, refused = self.predictor.answer(x[None], ["upload"])  # the input guard's refusal, if any
            elif isinstance(fmap, Examined):  # ONNX: this model's answer from examine, else (another model's) a pass
                probs = fmap.probabilities if fmap.service == self.name else self.predictor.probabilities(x[None])
                refused = [None]
            elif self.predictor.model is self.model and not self.predictor.tta:  # torch: head on the map
                with torch.inference_mode():
                    probs, refused = probabilities(self.model.forward_head(fmap)).numpy(), [None]
            else:
                probs, refused = self.predictor.probabilities(x[None]), [None]
        if refused[0] is not None:
            raise refused[0]  # ImageReadError: 422 not_a_chest_image
        probs = probs[0]
        classes = self.classes
        return Scored({c: float(p) for c, p in zip(classes, probs)}, classes[int(np.argmax(probs))],
                      None if roi is None else roi.to_dict())

    def predict(self, grey: np.ndarray) -> Scored:
        return self.score(self.predictor.prepare(grey))

    def explain(self, grey: np.ndarray, method: str = "gradcam", screened: bool = False):
        """Grad-CAM on the torch model (the explanation's probabilities are the torch model's).
        ``screened``: this model's guard has accepted ``grey`` already (:meth:`examine`)."""
        from ..explain.cam import explain

        with self._model_lock:
            if self.predictor.screen is not None and not screened:  # refuse what the guard refuses before explaining it
                self.predictor.screen.check(self.predictor.tensor(grey)[None], ["upload"])
            return explain(self.model, grey, method=method, limits=self.limits)
