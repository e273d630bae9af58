"""Multi-process training with PyTorch's own engine (``torch.distributed`` + DDP).

``cxrdx train`` runs unchanged under ``torchrun``: :func:`init_distributed` reads
the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` variables torchrun sets and joins
the process group (``nccl`` on GPU, ``gloo`` on CPU). Without torchrun nothing
is initialised and every helper here is a no-op, so single-process runs are
exactly as before.

Batch semantics under DDP: ``train.batch_size`` / ``train.finetune_batch_size``
are **per process**; one optimizer step sees ``batch_size x world_size`` images.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when a process group is running (torchrun, any world size)."""
        return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_distributed() -> DistContext:
    """Join the process group when launched by torchrun; else a single-process CPU/GPU context."""
    if not launched_by_torchrun():
        return current()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        local_rank = int(os.environ["LOCAL_RANK"])
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return current()


def current() -> DistContext:
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device)
    return DistContext(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))


def is_main() -> bool:
    return current().is_main


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: np.ndarray | torch.Tensor | float) -> np.ndarray:
    """Sum a metric array (a confusion matrix, loss sums, counts) over all ranks; float64 on every rank."""
    arr = np.asarray(values.detach().cpu() if torch.is_tensor(values) else values, dtype=np.float64)
    if not current().enabled:
        return arr
    t = torch.from_numpy(arr.copy())
    if dist.get_backend() == "nccl":
        t = t.to(current().device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def shard_indices(n: int, ctx: DistContext | None = None) -> np.ndarray:
    """This rank's rows of an ``n``-row evaluation set: ``rank::world_size``, no padding, no duplicates."""
    ctx = ctx or current()
    return np.arange(ctx.rank, n, ctx.world_size)


def wrap_ddp(module: nn.Module, ctx: DistContext | None = None) -> nn.Module:
    """DistributedDataParallel around ``module`` when a process group runs; the module itself otherwise."""
    ctx = ctx or current()
    if not ctx.enabled:
        return module
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (Intel AMX or AVX512-BF16), where bf16 autocast is ~2x faster."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    """``precision``: ``auto`` (bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere), ``bf16`` or ``fp32``."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision == "auto":
        return device.type == "cuda" or cpu_has_native_bf16()
    return precision == "bf16"


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 mixed-precision autocast for training forwards (weights and optimiser stay fp32), or nothing."""
    if uses_bf16(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_channels_last(module: nn.Module, device: torch.device) -> nn.Module:
    """channels_last memory format on CUDA (faster convolutions on tensor cores); unchanged on CPU."""
    return module.to(memory_format=torch.channels_last) if device.type == "cuda" else module


def global_mean(local_sum: torch.Tensor, local_count: float, ctx: DistContext | None = None) -> torch.Tensor:
    """This rank's share of a mean over the global batch.

    DDP averages gradients over ranks, so returning ``local_sum * world / global_count``
    makes the averaged gradient that of ``sum over all ranks / global_count``, exact even
    when ranks hold different numbers (or class weights) of samples.
    """
    ctx = ctx or current()
    total = float(all_reduce_sum(np.array([local_count]))[0]) if ctx.enabled else local_count
    return local_sum * (ctx.world_size / max(total, 1e-12))
