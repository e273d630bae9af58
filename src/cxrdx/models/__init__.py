"""Models: backbone and head registries, the hybrid model, its factory and run folders.

Submodules are imported on first use (``from cxrdx.models import create_model``
works, but ``import cxrdx.models`` alone loads neither torch nor timm).
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "BACKBONES": "backbones", "BackboneSpec": "backbones", "get_spec": "backbones",
    "HEADS": "heads", "create_head": "heads", "feature_map_to_sequence": "heads",
    "HybridModel": "hybrid", "ModelInfo": "hybrid", "ProbabilityModel": "hybrid",
    "create_model": "factory", "create_model_from_info": "factory",
    "WeightsUnavailableError": "weights",
    "probabilities": "outputs", "predict_proba": "outputs",
    "save_run": "run", "load_run": "run", "RunError": "run", "model_identity": "run",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
