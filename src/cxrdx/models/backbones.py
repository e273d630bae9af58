"""Backbone registry: which timm CNNs cxrdx knows, and how to feed them.

Every backbone gives a ``C x 7 x 7`` map from ``forward_features`` at 224x224,
which the heads read as a sequence of 49 steps of C features.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = (0.5, 0.5, 0.5)
TF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    """Name in cxrdx (also the timm model name)."""
    channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    target_layer: str
    """Dotted module path of the last convolutional stage (Grad-CAM target)."""
    blocks: str
    """Dotted path of the sequential container whose last N children fine-tuning unfreezes."""
    offline_weights: bool = False
    """True when ImageNet weights ship in an installed package (no network needed)."""
    paper_name: str = ""


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "tf_efficientnet_lite0", 1280, TF_MEAN, TF_STD,
            target_layer="bn2", blocks="blocks", offline_weights=True, paper_name="EfficientNet-Lite0",
        ),
        BackboneSpec(
            "densenet121", 1024, IMAGENET_MEAN, IMAGENET_STD,
            target_layer="features.norm5", blocks="features", paper_name="DenseNet121",
        ),
        BackboneSpec(
            "resnetv2_152", 2048, TF_MEAN, TF_STD,
            target_layer="norm", blocks="stages", paper_name="ResNet152V2",
        ),
        BackboneSpec(
            "vgg19", 512, IMAGENET_MEAN, IMAGENET_STD,
            target_layer="features.35", blocks="features", paper_name="VGG19",
        ),
    )
}


class UnknownBackboneError(ValueError):
    pass


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownBackboneError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


def build_backbone(name: str) -> nn.Module:
    """The timm network with random weights and no classifier (weights are loaded separately)."""
    spec = get_spec(name)
    return timm.create_model(spec.name, pretrained=False, num_classes=0)


def get_submodule(module: nn.Module, dotted: str) -> nn.Module:
    return module.get_submodule(dotted)
