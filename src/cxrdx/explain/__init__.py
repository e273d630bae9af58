"""Explain: Grad-CAM family heatmaps, overlays and a localisation score against lung / lesion masks.

``cxrdx.explain`` is both this package and the function ``explain(model, image)``:
importing a submodule makes Python bind the package to ``cxrdx.explain``,
replacing the lazy function defined in ``cxrdx/__init__.py``, so the package
itself is made callable and forwards to :func:`cxrdx.explain.cam.explain`.
"""

import sys
import types

from .cam import METHODS, Explanation, explain

__all__ = ["METHODS", "Explanation", "explain"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs) -> Explanation:
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
