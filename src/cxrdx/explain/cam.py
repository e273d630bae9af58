"""Grad-CAM family heatmaps for the hybrid CNN -> RNN model (pytorch-grad-cam).

The target layer is the backbone's last convolutional stage
(``BackboneSpec.target_layer``); the class score is back-propagated through
the RNN head to it. The model sees the whole image squashed to ``S x S`` (no
crop), so the ``S x S`` CAM is resized back to the original ``H x W``.

    >>> import cxrdx
    >>> exp = cxrdx.explain(model, "chest.png", method="gradcam")
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
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..config import ExplainConfig
from ..data.io import ReadLimits, read_image
from ..data.transforms import build_transform, preprocess
from ..models.hybrid import HybridModel
from .overlay import make_overlay

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM}
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM"}

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


def compute_cam(model: HybridModel, x: torch.Tensor, class_index: int, method: str = "gradcam", *, scorecam_batch_size: int = 64) -> np.ndarray:
    """``[1, 3, S, S]`` input -> ``S x S`` CAM in [0, 1] for ``class_index`` (gradients through the head)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    model.eval()  # dropout off; pytorch-grad-cam also calls eval()
    maps = None
    # Gradients are needed even when the caller runs under inference_mode / no_grad.
    with _CAM_LOCK, torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone()
        # compute_input_gradient: the input requires grad, so the frozen backbone's
        # target-layer activations are in the graph and their gradient is recorded.
        with METHODS[method](model=model, target_layers=[target_layer(model)]) as cam:
            cam.compute_input_gradient = method != "scorecam"
            if method == "scorecam":
                cam.batch_size = scorecam_batch_size
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(class_index)])
        model.zero_grad(set_to_none=True)
    if maps is None:  # pytorch-grad-cam's context manager swallows an IndexError
        raise RuntimeError(f"{method} failed on target layer {model.spec.target_layer!r}")
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
    """Heatmap, overlay and prediction for one X-ray (path, bytes or uint8 array; PNG/JPEG/DICOM).

    Raises :class:`~cxrdx.data.io.ImageReadError` for an unreadable file and
    ``ValueError`` for an unknown method or class.
    """
    settings = settings or ExplainConfig()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    grey = as_grey(image, limits)
    transform = build_transform(model.info.image_size, model.spec.mean, model.spec.std)
    x = preprocess(grey, transform)[None].to(next(model.parameters()).device)
    model.eval()
    with torch.inference_mode():
        probs = torch.softmax(model(x), dim=1)[0].float().cpu().numpy()
    idx = _class_index(model, target_class, probs)
    small = compute_cam(model, x, idx, method, scorecam_batch_size=settings.scorecam_batch_size)
    h, w = grey.shape
    heatmap = np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0).astype(np.float32)
    classes = model.classes
    predicted = classes[int(np.argmax(probs))]
    target = classes[idx]
    caption = f"predicted {predicted} {probs.max():.0%}  |  {METHOD_NAMES[method]} for {target}"
    overlay = make_overlay(grey, heatmap, caption, image_weight=settings.image_weight, max_side=settings.overlay_max_side)
    return Explanation(
        heatmap=heatmap, overlay=overlay, predicted=predicted,
        probabilities={c: float(p) for c, p in zip(classes, probs)}, image=grey, target=target, method=method,
    )

