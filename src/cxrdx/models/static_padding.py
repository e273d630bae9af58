"""Fix TensorFlow-style "SAME" padding for one input size, for export.

timm's ``tf_*`` backbones (the default ``tf_efficientnet_lite0`` among them) pad
their stride-2 convolutions TensorFlow's way: asymmetrically, by an amount
computed from the input's height and width at run time (``Conv2dSame``). In an
ONNX graph that becomes ``Shape -> Ceil -> Sub -> Pad`` chains in front of the
convolutions. The ``Pad`` nodes cost ONNX Runtime about a fifth of the model's
time, and they break its blocked (NCHWc) convolution layout, which adds layout
reorders on every such layer.

A served model has a fixed input size (``ModelInfo.image_size``), so those
paddings are constants. :func:`freeze_same_padding` returns a copy of a model
whose ``Conv2dSame`` layers pad by the constants for that size: the output is
identical, and ONNX Runtime folds a constant zero ``Pad`` into the ``Conv``
that follows it. The training model is left untouched.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Conv2dSame


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class StaticPadConv2d(nn.Conv2d):
    """``nn.Conv2d`` preceded by a constant zero padding ``(left, right, top, bottom)``."""

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                         conv.groups, conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        self.weight, self.bias = conv.weight, conv.bias
        self.pads = tuple(int(p) for p in pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pads) if any(self.pads) else x)


def freeze_same_padding(model: nn.Module, image_size: int) -> nn.Module:
    """A copy of ``model`` (eval mode) in which every ``Conv2dSame`` pads by its constants for
    ``image_size`` x ``image_size`` inputs. Models without such layers come back as an unchanged copy."""
    model = copy.deepcopy(model).eval()
    targets = {name: m for name, m in model.named_modules() if isinstance(m, Conv2dSame)}
    if not targets:
        return model
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
             for name, m in targets.items()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    for name, conv in targets.items():
        (h, w), (kh, kw), (sh, sw), (dh, dw) = sizes[name], conv.kernel_size, conv.stride, conv.dilation
        top, bottom = _same_pads(h, kh, sh, dh)
        left, right = _same_pads(w, kw, sw, dw)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, StaticPadConv2d(conv, (left, right, top, bottom)))
    return model
