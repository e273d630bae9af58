"""Backbones that are not (only) a timm CNN, registered beside the timm ones so that the feature cache,
heads, ``cxrdx train`` / ``compare``, ONNX export and serving work on them unchanged.

* :class:`RawPatches`, the design's "RNN on the raw signal" baseline: no CNN and no weights. The
  normalised greyscale image (``S x S``) is cut into a grid of non-overlapping ``P x P`` patches, and
  each patch's ``P*P`` pixels become the feature vector of one step: a ``P*P x S/P x S/P`` "map" that
  the heads read as ``(S/P)^2`` steps. At 224 px with 32 px patches: ``1024 x 7 x 7``, 49 steps, like
  the CNN backbones. It is a pure rearrangement of pixels (``pixel_unshuffle``).
* :class:`MultiScale`: an EfficientNet(-Lite)'s final map concatenated with its last stride-16 stage,
  resized (bilinear; at 224 px exactly a 2 x 2 average) to the final grid (the last two resolution levels of the feature pyramid in one
  sequence). Its ImageNet weights are those of the wrapped network (``weights_target``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RawPatches(nn.Module):
    """``[B, 3, S, S]`` normalised image -> ``[B, P*P, S/P, S/P]`` pixel patches (channel 0: the grey image)."""

    def __init__(self, patch: int = 32):
        super().__init__()
        self.patch = patch

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.patch or x.shape[-2] % self.patch:
            raise ValueError(f"raw patches: image size {tuple(x.shape[-2:])} is not a multiple of the {self.patch} px patch")
        return F.pixel_unshuffle(x[:, :1], self.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class MultiScale(nn.Module):
    """A timm EfficientNet whose ``forward_features`` returns ``[final map ; resized stage mid_block]`` channels.

    ``mid_block``: index in ``base.blocks`` of the last stride-16 stage (4 for the EfficientNet family).
    """

    def __init__(self, base: nn.Module, mid_block: int = 4):
        super().__init__()
        self.base = base
        self.mid_block = mid_block

    @property
    def weights_target(self) -> nn.Module:
        """The module ImageNet weights load into (the wrapped timm network)."""
        return self.base

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        x = b.bn1(b.conv_stem(x))
        mid = x
        for i, block in enumerate(b.blocks):
            x = block(x)
            if i == self.mid_block:
                mid = x
        x = b.bn2(b.conv_head(x))
        mid = F.interpolate(mid, size=x.shape[-2:], mode="bilinear", align_corners=False)  # exports to ONNX Resize
        return torch.cat([x, mid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
