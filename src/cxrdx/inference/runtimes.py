"""Runtimes: which engine runs a trained model, by name (``torch``, ``torch-bf16``, ``torch-cuda``, ``onnx``, ``onnx-int8``).

``create_predictor(run_dir, runtime)`` is what the CLI (``cxrdx predict
--runtime``) and the server (``cxrdx serve --runtime``) call. Both predictors
share decoding, preprocessing, batching and per-file errors
(:class:`~cxrdx.inference.predictor.Predictor`); only the model call differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..data.io import ReadLimits
from ..models.hybrid import HybridModel
from ..registry import Registry
from .predictor import Predictor

PredictorFactory = Callable[..., Predictor]

RUNTIMES: Registry[PredictorFactory] = Registry("runtimes")


@RUNTIMES.register("torch")
def torch_predictor(run_dir: str | Path, *, model: HybridModel | None = None, limits: ReadLimits | None = None,
                    batch_size: int = 16, threads: int | None = None) -> Predictor:
    """PyTorch fp32 on the CPU; the reference (and the only runtime that can explain with Grad-CAM)."""
    from ..models.run import load_run

    return Predictor(model if model is not None else load_run(run_dir), limits=limits, batch_size=batch_size)


@RUNTIMES.register("onnx")
def onnx_predictor(run_dir: str | Path, *, model: HybridModel | None = None, limits: ReadLimits | None = None,
                   batch_size: int = 16, threads: int | None = None) -> Predictor:
    """ONNX Runtime on the CPU, from RUN_DIR/model.onnx (made by `cxrdx export --onnx`); faster on small CPUs."""
    from .onnx_runtime import OnnxPredictor

    return OnnxPredictor.from_run_dir(run_dir, limits=limits, batch_size=batch_size, threads=threads)


@RUNTIMES.register("onnx-int8")
def onnx_int8_predictor(run_dir: str | Path, *, model: HybridModel | None = None, limits: ReadLimits | None = None,
                        batch_size: int = 16, threads: int | None = None) -> Predictor:
    """ONNX Runtime int8 from RUN_DIR/model.int8.onnx (`cxrdx export --onnx --quantize int8`); approximate.

    Static QDQ quantization, VNNI kernels where the CPU has them; check its agreement with fp32 (benchmarks/throughput.py)."""
    from .onnx_runtime import OnnxPredictor
    from .quantize import INT8_FILE

    return OnnxPredictor.from_run_dir(run_dir, file=INT8_FILE, limits=limits, batch_size=batch_size, threads=threads)


@RUNTIMES.register("torch-bf16")
def torch_bf16_predictor(run_dir: str | Path, *, model: HybridModel | None = None, limits: ReadLimits | None = None,
                         batch_size: int = 16, threads: int | None = None) -> Predictor:
    """PyTorch with bf16 autocast and channels_last (native on AVX512-BF16 / AMX CPUs and GPUs); approximate.

    oneDNN bf16 kernels on the CPU; check its agreement with fp32 (benchmarks/throughput.py)."""
    from ..models.run import load_run
    from .fast_torch import Bf16Predictor

    return Bf16Predictor(model if model is not None else load_run(run_dir), limits=limits, batch_size=batch_size)


@RUNTIMES.register("torch-cuda")
def torch_cuda_predictor(run_dir: str | Path, *, model: HybridModel | None = None, limits: ReadLimits | None = None,
                         batch_size: int = 16, threads: int | None = None) -> Predictor:
    """PyTorch fp32 on the first CUDA GPU (decoding stays on the CPU); refused in one line where there is none.

    A copy of the model moves to the GPU (the caller's, also used by Grad-CAM, stays on the CPU)."""
    import copy

    import torch

    from ..config import ConfigError
    from ..models.run import load_run

    if not torch.cuda.is_available():
        raise ConfigError("runtime torch-cuda needs a CUDA GPU and none is visible to PyTorch here; "
                          "use --runtime torch, onnx or onnx-int8")
    model = copy.deepcopy(model) if model is not None else load_run(run_dir)
    return Predictor(model.to("cuda"), limits=limits, batch_size=batch_size)


def create_predictor(run_dir: str | Path, runtime: str = "torch", *, model: HybridModel | None = None,
                     limits: ReadLimits | None = None, batch_size: int = 16, threads: int | None = None,
                     guard: bool = True) -> Predictor:
    """A predictor for the model in ``run_dir`` on ``runtime`` (a name in :data:`RUNTIMES`).

    ``model``: the run's model when the caller has loaded it already (the torch runtime then reuses it).
    ``threads``: ONNX Runtime's intra-op threads (torch uses ``torch.set_num_threads``).
    ``guard``: screen inputs with the run's input guard (``guard.json``, :mod:`cxrdx.inference.guard`) when it has one:
    refused images become ``not_a_chest_image`` errors instead of predictions.
    """
    factory = RUNTIMES.get(runtime)
    predictor = factory(run_dir, model=model, limits=limits, batch_size=batch_size, threads=threads)
    if guard:
        from .guard import attach_guard

        attach_guard(predictor, run_dir, model)
    return predictor
