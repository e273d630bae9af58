"""``cxrdx export --onnx``: the whole hybrid model (backbone + RNN head + softmax) as one ONNX graph.

The graph takes ``image``: ``[batch, 3, S, S]`` float32, normalised exactly as
:func:`cxrdx.data.transforms.build_transform` does, and returns
``probabilities``: ``[batch, classes]``, and ``pooled_features``: ``[batch, C]``, the
backbone map's spatial mean from the same pass (what the input guard measures, so a
guarded ONNX predictor needs no second backbone). The batch axis is dynamic. Everything
the runtime needs to preprocess and label (classes, image size, mean, std,
model id and version) is stored in the file's metadata.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models.hybrid import HybridModel, ProbabilityModel
from ..models.outputs import probabilities
from ..models.run import load_run, model_identity
from ..models.static_padding import freeze_same_padding
from ..models.onnx_graph import optimise_for_inference

ONNX_FILE = "model.onnx"
OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
POOLED_NAME = "pooled_features"
META_KEY = "cxrdx"


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    """Largest |ONNX Runtime - PyTorch| probability on the check batch."""


def onnx_metadata(model: HybridModel, identity: dict) -> dict:
    return {
        "classes": model.classes,
        "image_size": model.info.image_size,
        "mean": list(model.spec.mean),
        "std": list(model.spec.std),
        "backbone": model.info.backbone,
        "head": model.info.head,
        **({"roi": model.info.extra["roi"]} if "roi" in model.info.extra else {}),  # the region of interest
        **identity,
    }


def export_model(model: HybridModel, path: str | Path, *, identity: dict | None = None, opset: int = OPSET) -> Path:
    """Write ``model`` (eval mode, softmax included) to ``path`` as ONNX with a dynamic batch axis.

    The spatial size is fixed at ``model.info.image_size``, so TF-style "SAME" paddings are exported as
    constants (:func:`~cxrdx.models.static_padding.freeze_same_padding`) and then folded into the
    convolutions' own ``pads`` (:func:`~cxrdx.models.onnx_graph.optimise_for_inference`)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = model.info.image_size
    wrapped = ProbabilityModel(freeze_same_padding(model, size), pooled_features=True).eval()
    example = torch.zeros(2, 3, size, size)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and RNN batch-size notes
        torch.onnx.export(
            wrapped, (example,), str(tmp), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME, POOLED_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}, POOLED_NAME: {0: "batch"}},
        )
    proto = optimise_for_inference(tmp)
    onnx.checker.check_model(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(onnx_metadata(model, identity or {}))
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def max_difference(model: HybridModel, onnx_path: str | Path, batch: torch.Tensor) -> float:
    """Largest absolute difference between ONNX Runtime's and PyTorch's probabilities on ``batch``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ours = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy().astype(np.float32)})[0]
    with torch.inference_mode():
        ref = probabilities(model.eval()(batch)).numpy()
    return float(np.abs(ours - ref).max())


def export_run(run_dir: str | Path, out: str | Path | None = None, check_batch: torch.Tensor | None = None) -> ExportResult:
    """Export a run folder's model to ``out`` (default ``RUN_DIR/model.onnx``) and check it against PyTorch."""
    run_dir = Path(run_dir)
    model = load_run(run_dir)
    ident = model_identity(run_dir)
    path = export_model(model, Path(out) if out else run_dir / ONNX_FILE,
                        identity={"model_id": ident.id, "model_version": ident.version, "run": ident.run})
    if check_batch is None:
        size = model.info.image_size
        check_batch = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    return ExportResult(path=path, max_abs_diff=max_difference(model, path, check_batch))
