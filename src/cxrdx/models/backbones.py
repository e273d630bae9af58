"""Backbone registry: which timm CNNs cxrdx knows, and how to feed them.

Every backbone gives a ``C x 7 x 7`` map from ``forward_features`` at 224x224,
which the heads read as a sequence of 49 steps of C features.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch.nn as nn

from ..registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = (0.5, 0.5, 0.5)
TF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build and feed one backbone (like timm's ``pretrained_cfg``)."""

    name: str
    """Name in cxrdx (also the timm model name)."""
    channels: int
    """Channels C of the ``forward_features`` map (timm's ``num_features``)."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    target_layer: str
    """Dotted module path of the last convolutional stage (Grad-CAM target)."""
    blocks: str
    """Dotted path of the sequential container whose last N children fine-tuning unfreezes."""
    offline_weights: bool = False
    """True when ImageNet weights ship in an installed package (no network needed)."""
    paper_name: str = ""
    input_size: tuple[int, int, int] = (3, 224, 224)
    """``(channels, height, width)`` the backbone is trained and fed at."""
    feature_size: tuple[int, int] = (7, 7)
    """Spatial size of the feature map at ``input_size`` (the heads' 49 steps)."""
    interpolation: str = "bilinear"

    def describe(self) -> str:
        weights = "ImageNet weights offline" if self.offline_weights else "ImageNet weights from the hub cache"
        return f"{self.paper_name or self.name}: {self.channels} x {self.feature_size[0]} x {self.feature_size[1]} map, {weights}"


BACKBONES: Registry[BackboneSpec] = Registry("backbones", describe=BackboneSpec.describe)
for _spec in (
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
):
    BACKBONES.register(_spec.name, _spec)


def get_spec(name: str) -> BackboneSpec:
    """The spec of backbone ``name``; :class:`~cxrdx.registry.UnknownNameError` (one line) if there is none."""
    return BACKBONES.get(name)


def build_backbone(spec: BackboneSpec) -> nn.Module:
    """The timm network with random weights and no classifier (weights are loaded separately)."""
    return timm.create_model(spec.name, pretrained=False, num_classes=0)
