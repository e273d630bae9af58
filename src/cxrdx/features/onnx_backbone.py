"""The frozen backbone's ``forward_features`` in ONNX Runtime (fp32), for the feature cache.

On a small CPU ONNX Runtime computes the same maps ~3x faster than PyTorch eager
(blocked NCHWc convolutions, TF "SAME" paddings folded into them). It is fp32
like torch but not bit-identical: a different summation order moves values by
~1e-6 relative (most stored fp16 values are equal, a few differ in the last
bit). So the feature cache keys ONNX maps apart (``__onnx`` suffix, see
:func:`cxrdx.features.cache.cache_key`): torch and ONNX entries never mix, and a
run's head is trained and scored on maps from one runtime, recorded in
``model.json`` (``extra["feature_runtime"]``).

The exported graph is cached beside the features, named by the SHA-1 of the
backbone's weights, image size and the onnxruntime / torch versions, so it is
made once per machine (a few seconds).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..models.hybrid import HybridModel
from ..models.onnx_graph import optimise_for_inference, session_options
from ..models.static_padding import freeze_same_padding

RUNTIMES = ("torch", "onnx")
INPUT, OUTPUT = "image", "features"


class _Features(nn.Module):
    def __init__(self, model: HybridModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def backbone_digest(model: HybridModel) -> str:
    """SHA-1 of the backbone's weights and buffers, the input size and the exporter / runtime versions."""
    import onnxruntime as ort

    h = hashlib.sha1(f"{model.info.backbone}|{model.info.image_size}|{torch.__version__}|{ort.__version__}".encode())
    for name, t in model.backbone.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_backbone(model: HybridModel, path: str | Path) -> Path:
    """``model.forward_features`` as an ONNX graph (dynamic batch, fixed size), optimised as the full export."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = model.info.image_size
    wrapped = _Features(freeze_same_padding(model, size)).eval()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (torch.zeros(2, 3, size, size),), str(tmp), dynamo=False, opset_version=17,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    proto = optimise_for_inference(tmp)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


class OnnxBackbone:
    """Callable ``[B, 3, S, S]`` float32 array -> ``[B, C, h, w]`` float32 maps, in ONNX Runtime on the CPU."""

    def __init__(self, model: HybridModel, cache_dir: str | Path, threads: int | None = None):
        import onnxruntime as ort

        path = Path(cache_dir) / "onnx" / f"backbone-{backbone_digest(model)}.onnx"
        if not path.is_file():
            export_backbone(model.cpu().eval(), path)
        self.path = path
        self.session = ort.InferenceSession(str(path), session_options(threads or torch.get_num_threads()),
                                            providers=["CPUExecutionProvider"])

    def __call__(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        x = batch.numpy() if isinstance(batch, torch.Tensor) else batch
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]


def resolve_runtime(model: HybridModel, runtime: str | None) -> str:
    """The extraction runtime: ``runtime``, else the one ``model.json`` records, else ``torch``; ``onnx`` only
    for a model on the CPU with onnxruntime installed (otherwise ``torch``)."""
    runtime = runtime or model.info.extra.get("feature_runtime") or "torch"
    if runtime not in RUNTIMES:
        raise ValueError(f"feature runtime must be one of {RUNTIMES}, not {runtime!r}")
    if runtime == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "torch"
        if next(model.parameters()).device.type != "cpu":
            return "torch"
    return runtime
