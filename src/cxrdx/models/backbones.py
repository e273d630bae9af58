"""Backbone registry: which timm CNNs cxrdx knows, and how to feed them.

Every backbone gives a ``C x H x W`` map from ``forward_features`` (``7 x 7`` at 224x224),
which the heads read as a sequence of ``H*W`` steps of C features. Besides the timm CNNs:
``raw_patches`` (no CNN: the design's RNN-on-the-raw-signal baseline) and ``*_ms`` multi-scale
variants (:mod:`cxrdx.models.raw_signal`).
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
    kind: str = "timm"
    """``timm`` (a timm CNN), ``raw`` (pixels only, no CNN, no weights) or ``multiscale`` (last two stages of ``base``)."""
    base: str = ""
    """For ``multiscale``: the timm network it wraps (and whose weights it loads)."""

    @property
    def timm_name(self) -> str:
        """The timm network built (and whose ImageNet weights are loaded)."""
        return self.base or self.name

    @property
    def has_weights(self) -> bool:
        """False for the raw-signal backbone: nothing to load, fine-tune or explain with Grad-CAM."""
        return self.kind != "raw"

    def describe(self) -> str:
        size = f"{self.channels} x {self.feature_size[0]} x {self.feature_size[1]} map at {self.input_size[1]} px"
        if not self.has_weights:
            return f"{self.paper_name}: {size}, no CNN, needs no weights"
        weights = "ImageNet weights offline" if self.offline_weights else "ImageNet weights from the hub cache"
        return f"{self.paper_name or self.name}: {size}, {weights}"


BACKBONES: Registry[BackboneSpec] = Registry("backbones", describe=BackboneSpec.describe)
for _spec in (
    BackboneSpec(
        "tf_efficientnet_lite0", 1280, TF_MEAN, TF_STD,
        target_layer="bn2", blocks="blocks", offline_weights=True, paper_name="EfficientNet-Lite0",
    ),
    BackboneSpec(
        "tf_efficientnet_lite1", 1280, TF_MEAN, TF_STD, target_layer="bn2", blocks="blocks", offline_weights=True,
        paper_name="EfficientNet-Lite1", input_size=(3, 240, 240), feature_size=(8, 8),
    ),
    BackboneSpec(
        "tf_efficientnet_lite2", 1280, TF_MEAN, TF_STD, target_layer="bn2", blocks="blocks", offline_weights=True,
        paper_name="EfficientNet-Lite2", input_size=(3, 260, 260), feature_size=(9, 9),
    ),
    *(BackboneSpec(
        f"tf_efficientnet_lite{i}_ms", 1280 + mid, TF_MEAN, TF_STD, target_layer="base.bn2",
        blocks="base.blocks", offline_weights=True, paper_name=f"EfficientNet-Lite{i} multi-scale (final map + stride-16 stage)",
        input_size=(3, size, size), feature_size=(grid, grid), kind="multiscale", base=f"tf_efficientnet_lite{i}",
    ) for i, size, grid, mid in ((0, 224, 7, 112), (1, 240, 8, 112), (2, 260, 9, 120))),
    BackboneSpec(
        "raw_patches", 1024, TF_MEAN, TF_STD, target_layer="", blocks="", kind="raw",
        paper_name="raw signal: greyscale 224 px cut into 7 x 7 patches of 32 x 32 pixels (1024 values per step)",
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
    """The network with random weights and no classifier (weights are loaded separately)."""
    from .raw_signal import MultiScale, RawPatches

    if spec.kind == "raw":
        return RawPatches(spec.input_size[1] // spec.feature_size[0])
    net = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
    return MultiScale(net) if spec.kind == "multiscale" else net
