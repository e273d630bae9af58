"""Logits -> probabilities: the one softmax every part of cxrdx uses.

A model's raw output (``[batch, classes]`` logits, possibly bf16 under
autocast) becomes float32 class probabilities here, and nowhere else: the
predictor, training validation, fine-tuning, Grad-CAM, the series models and
the ONNX graph (:class:`~cxrdx.models.hybrid.ProbabilityModel`) all call
:func:`probabilities`; heads scored on cached feature maps go through
:func:`predict_proba`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis (the last one), in float32; same device as ``logits``.

    Lower-precision logits are upcast first, so bf16 autocast never rounds the probabilities.
    """
    if logits.dtype != torch.float32:
        logits = logits.float()
    return torch.softmax(logits, dim=-1)


@torch.inference_mode()
def predict_proba(head: nn.Module, x: torch.Tensor, batch_size: int = 256, num_classes: int | None = None) -> np.ndarray:
    """``[N, classes]`` float32 probabilities of ``head`` (eval mode) on cached feature maps ``x``, in chunks.

    ``num_classes`` only shapes the answer for an empty ``x`` (``[0, num_classes]``; ``[0, 0]`` if not given).
    """
    head.eval()
    out = [probabilities(head(x[i : i + batch_size])).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, num_classes or 0), np.float32)
