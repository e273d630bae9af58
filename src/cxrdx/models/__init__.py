"""Models: backbone registry, RNN heads, the hybrid model and its factory."""

from .backbones import BACKBONES, BackboneSpec, get_spec
from .factory import create_model, create_model_from_info
from .heads import HEADS, create_head, feature_map_to_sequence
from .hybrid import HybridModel, ModelInfo, ProbabilityModel
from .weights import WeightsUnavailableError

__all__ = [
    "BACKBONES", "BackboneSpec", "HEADS", "HybridModel", "ModelInfo", "ProbabilityModel",
    "WeightsUnavailableError", "create_head", "create_model", "create_model_from_info",
    "feature_map_to_sequence", "get_spec",
]
