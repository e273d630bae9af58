"""``torch-bf16``: the PyTorch model under bf16 autocast with channels_last weights and inputs.

On the CPU, oneDNN runs the convolutions in bf16: natively (``vdpbf16ps``) on
CPUs with AVX512-BF16 (e.g. AMD Zen 4, Intel Cooper Lake) or AMX (Intel
Sapphire Rapids and later), emulated (slower than fp32) elsewhere. The RNN head
and the softmax see bf16 activations too; probabilities are computed in fp32
from the upcast logits. Results are approximate, not bit-identical to fp32:
``benchmarks/throughput.py`` reports class agreement and max probability
difference against fp32 over a run's held-out split.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..models.hybrid import HybridModel
from ..models.outputs import probabilities
from .predictor import Predictor


def cpu_bf16_kind() -> str:
    """``amx``, ``avx512_bf16`` or ``emulated``: how this CPU computes bf16."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return "amx" if caps.get("amx_bf16") else "avx512_bf16" if caps.get("avx512_bf16") else "emulated"


class Bf16Predictor(Predictor):
    """:class:`Predictor` whose model call runs under ``torch.autocast(dtype=torch.bfloat16)``, channels_last."""

    def __init__(self, model: HybridModel, **kwargs):
        # A copy: the caller's model (the server's, also used by Grad-CAM) keeps its fp32 NCHW layout.
        super().__init__(copy.deepcopy(model).to(memory_format=torch.channels_last), **kwargs)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        x = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            logits = self.model(x)
        return probabilities(logits.float().cpu()).numpy()
