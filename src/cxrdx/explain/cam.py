"""Grad-CAM family heatmaps for the hybrid CNN -> RNN model (pytorch-grad-cam).

The target layer is the backbone's last convolutional stage
(``BackboneSpec.target_layer``); the class score is back-propagated through
the RNN head to it. The model sees its region of interest (``data.roi`` it was
trained with: the whole image, or the lungs' box) squashed to ``S x S``; the
``S x S`` CAM is computed in that frame, resized to the region and placed in
the original ``H x W`` image (zero outside the region), so overlays and lung
scores are always in the original image's frame.

:class:`Explainer` follows pytorch-grad-cam's ``BaseCAM(model, target_layers)(input, targets)``:
configure it once for a model and a method (:data:`~cxrdx.explain.methods.CAM_METHODS`), then call it
per image.

    >>> from cxrdx.explain import Explainer
    >>> exp = Explainer(model, method="gradcam")("chest.png")
    >>> exp.predicted, exp.heatmap.shape, exp.save("out", "chest")
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..config import ConfigError, ExplainConfig
from ..data.io import ReadLimits, read_image
from ..data.transforms import build_transform, preprocess
from ..features.roi import RegionOfInterest, RoiInfo
from ..models.hybrid import HybridModel
from ..models.outputs import probabilities
from .methods import CAM_METHODS
from .overlay import make_overlay

# CAM objects hook the model's target layer; one explanation at a time per process.
_CAM_LOCK = threading.Lock()


@dataclass
class Explanation:
    """A heatmap of where ``model`` looked for class ``target``, on one image."""

    heatmap: np.ndarray
    """``float32`` ``H x W`` (the input image's size), values in [0, 1]."""
    overlay: Image.Image
    """RGB: heatmap over the X-ray, caption with the predicted class and its probability."""
    predicted: str
    probabilities: dict[str, float]
    image: np.ndarray
    """The ``uint8`` greyscale X-ray the heatmap belongs to."""
    target: str = ""
    """Class whose score the heatmap explains (the predicted one unless asked otherwise)."""
    method: str = "gradcam"
    files: dict[str, Path] = field(default_factory=dict)
    roi: RoiInfo | None = None
    """The region the model saw (its box in the original image); None for whole-image models."""

    @property
    def peak(self) -> tuple[int, int]:
        """``(row, col)`` of the heatmap's maximum."""
        r, c = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape)
        return int(r), int(c)

    def save(self, out_dir: str | Path, stem: str) -> dict[str, Path]:
        """Write ``<stem>_overlay.png`` and ``<stem>_heatmap.npy`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.files = {"overlay": out / f"{stem}_overlay.png", "heatmap": out / f"{stem}_heatmap.npy"}
        self.overlay.save(self.files["overlay"])
        np.save(self.files["heatmap"], self.heatmap.astype(np.float32))
        return self.files

    def to_dict(self) -> dict:
        return {
            "predicted": self.predicted, "probabilities": self.probabilities, "target": self.target,
            "method": self.method, "height": int(self.heatmap.shape[0]), "width": int(self.heatmap.shape[1]),
            "peak": {"row": self.peak[0], "col": self.peak[1]},
            **({"roi": self.roi.to_dict()} if self.roi is not None else {}),
            **({"files": {k: str(v) for k, v in self.files.items()}} if self.files else {}),
        }


def as_grey(image: np.ndarray | str | Path | bytes, limits: ReadLimits | None = None) -> np.ndarray:
    """Path / bytes through the hardened reader; arrays must be 8-bit (greyscale, RGB or RGBA)."""
    if isinstance(image, (str, Path, bytes, bytearray, memoryview)):
        return read_image(bytes(image) if isinstance(image, (bytearray, memoryview)) else image, limits=limits)
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"expected an 8-bit HxW or HxWx3 array, got {arr.dtype} {arr.shape}; pass the file instead")
    if arr.ndim == 3:
        arr = np.asarray(Image.fromarray(arr[..., :3]).convert("L"))
    return np.ascontiguousarray(arr)


def target_layer(model: HybridModel) -> torch.nn.Module:
    if not model.spec.target_layer:  # the raw-signal backbone: no convolutional layer to explain
        raise ConfigError(f"backbone {model.spec.name} has no convolutional layer for Grad-CAM: explain needs a CNN backbone")
    return model.backbone.get_submodule(model.spec.target_layer)


def _class_index(model: HybridModel, target_class: str | int | None, probs: np.ndarray) -> int:
    if target_class is None:
        return int(np.argmax(probs))
    if isinstance(target_class, str):
        if target_class not in model.classes:
            raise ValueError(f"unknown class {target_class!r}; the model knows {model.classes}")
        return model.classes.index(target_class)
    if not 0 <= int(target_class) < len(model.classes):
        raise ValueError(f"class index {target_class} out of range for {model.classes}")
    return int(target_class)


class Explainer:
    """Heatmap, overlay and prediction of ``model`` for one X-ray per call.

    ``Explainer(model, method)(image, target=None)``: ``image`` is a path, bytes (PNG/JPEG/DICOM) or an
    8-bit array; ``target`` a class name or index (default: the predicted class). An unknown method
    raises :class:`~cxrdx.registry.UnknownNameError`, an unknown class ``ValueError``, an unreadable
    file :class:`~cxrdx.data.io.ImageReadError`.
    """

    def __init__(self, model: HybridModel, method: str = "gradcam", *, limits: ReadLimits | None = None,
                 settings: ExplainConfig | None = None, roi: RegionOfInterest | None = None):
        self.model = model
        self.roi = roi if roi is not None else RegionOfInterest.from_model_info(model.info)
        self.method = CAM_METHODS.get(method)
        self.limits = limits
        self.settings = settings or ExplainConfig()
        self.transform = build_transform(model.info.image_size, model.spec.mean, model.spec.std)

    def __call__(self, image: np.ndarray | str | Path | bytes, target: str | int | None = None) -> Explanation:
        model = self.model
        grey = as_grey(image, self.limits)
        region, where = (grey, None) if self.roi.is_identity else self.roi(grey)
        x = preprocess(region, self.transform)[None].to(next(model.parameters()).device)
        probs = self.predict(x)
        idx = _class_index(model, target, probs)
        small = self.cam(x, idx)
        h, w = grey.shape
        if where is None:
            heatmap = np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0).astype(np.float32)
        else:  # CAM of the region -> the original frame
            heatmap = np.clip(RegionOfInterest.to_original(small, where), 0.0, 1.0).astype(np.float32)
        classes = model.classes
        predicted = classes[int(np.argmax(probs))]
        caption = f"predicted {predicted} {probs.max():.0%}  |  {self.method.display} for {classes[idx]}"
        overlay = make_overlay(grey, heatmap, caption, image_weight=self.settings.image_weight,
                               max_side=self.settings.overlay_max_side)
        return Explanation(
            heatmap=heatmap, overlay=overlay, predicted=predicted,
            probabilities={c: float(p) for c, p in zip(classes, probs)}, image=grey, target=classes[idx],
            method=self.method.name, roi=where,
        )

    def predict(self, x: torch.Tensor) -> np.ndarray:
        """Class probabilities of the ``[1, 3, S, S]`` input."""
        self.model.eval()
        with torch.inference_mode():
            return probabilities(self.model(x))[0].cpu().numpy()

    def cam(self, x: torch.Tensor, class_index: int) -> np.ndarray:
        """``[1, 3, S, S]`` input -> ``S x S`` CAM in [0, 1] for ``class_index`` (gradients through the head)."""
        model, method = self.model, self.method
        model.eval()  # dropout off; pytorch-grad-cam also calls eval()
        maps = None
        # Gradients are needed even when the caller runs under inference_mode / no_grad.
        with _CAM_LOCK, torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone()
            # compute_input_gradient: the input requires grad, so the frozen backbone's
            # target-layer activations are in the graph and their gradient is recorded.
            with method.cam_type()(model=model, target_layers=[target_layer(model)]) as cam:
                cam.compute_input_gradient = method.input_gradient
                if method.batched:
                    cam.batch_size = self.settings.scorecam_batch_size
                maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(class_index)])
            model.zero_grad(set_to_none=True)
        if maps is None:  # pytorch-grad-cam's context manager swallows an IndexError
            raise RuntimeError(f"{method.name} failed on target layer {model.spec.target_layer!r}")
        return np.clip(maps[0], 0.0, 1.0).astype(np.float32)


def explain(
    model: HybridModel,
    image: np.ndarray | str | Path | bytes,
    method: str = "gradcam",
    target_class: str | int | None = None,
    *,
    limits: ReadLimits | None = None,
    settings: ExplainConfig | None = None,
) -> Explanation:
    """One-off :class:`Explainer` call: ``Explainer(model, method, ...)(image, target_class)``."""
    return Explainer(model, method, limits=limits, settings=settings)(image, target_class)
