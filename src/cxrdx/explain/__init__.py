"""Explain: Grad-CAM family heatmaps, overlays and a localisation score against lung / lesion masks.

    >>> from cxrdx.explain import Explainer
    >>> exp = Explainer(model, method="gradcam")("chest.png")

Names are imported lazily, so ``import cxrdx.explain`` (and its light :mod:`~cxrdx.explain.methods`)
does not load torch.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {"Explainer": "cam", "Explanation": "cam", "explain": "cam", "CAM_METHODS": "methods", "CamMethod": "methods"}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
