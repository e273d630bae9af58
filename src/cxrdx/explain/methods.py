"""The Grad-CAM family methods :class:`~cxrdx.explain.cam.Explainer` offers, by name.

Light on purpose (no torch): ``load_config`` checks ``explain.method`` against :data:`CAM_METHODS`
before any data is read. The pytorch-grad-cam class is imported only when a CAM is computed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class CamMethod:
    name: str
    display: str
    """Name shown in captions, e.g. ``Grad-CAM``."""
    cam_class: str
    """Class of :mod:`pytorch_grad_cam` (a ``BaseCAM`` subclass)."""
    input_gradient: bool = True
    """Record the input gradient (gradient methods; the frozen backbone's activations then carry one)."""
    batched: bool = False
    """Runs one forward pass per channel, in batches of ``ExplainConfig.scorecam_batch_size``."""

    def cam_type(self) -> type:
        return getattr(importlib.import_module("pytorch_grad_cam"), self.cam_class)


CAM_METHODS: Registry[CamMethod] = Registry("cam-methods", describe=lambda m: m.display)
for _m in (
    CamMethod("gradcam", "Grad-CAM", "GradCAM"),
    CamMethod("gradcam++", "Grad-CAM++", "GradCAMPlusPlus"),
    CamMethod("scorecam", "Score-CAM", "ScoreCAM", input_gradient=False, batched=True),
):
    CAM_METHODS.register(_m.name, _m)
del _m
