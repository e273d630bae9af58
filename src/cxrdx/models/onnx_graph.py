"""Graph passes applied to an exported ONNX model before it is saved.

1. :func:`fold_constants`: ONNX Runtime's *basic* optimisation level, saved to
   disk. It only makes provider-independent, semantics-preserving rewrites
   (constant folding, removal of identities and dead nodes), so the result is
   still plain ONNX that any runtime can load. It turns the exporter's
   ``Constant -> Reshape -> Slice -> Cast`` chains that compute ``Pad`` widths
   into initializers.
2. :func:`fuse_pad_into_conv`: a constant zero ``Pad`` of the spatial axes
   whose only reader is a ``Conv`` becomes that ``Conv``'s own (possibly
   asymmetric) ``pads`` attribute. ONNX Runtime 1.32 does not make this fusion
   itself here, and an unfused ``Pad`` costs about a fifth of the default
   model's time and breaks its blocked convolution layout.
3. :func:`prune_initializers`: drops initializers that no node reads any more.

:func:`session_options`: how cxrdx runs those graphs on the CPU (the feature cache's backbone and the
``onnx`` / ``onnx-int8`` predictors alike).
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def session_options(threads: int | None = None):
    """CPU ONNX Runtime options: every graph optimisation, ``threads`` intra-op threads (default: every core),
    one inter-op thread, and idle workers that sleep instead of spinning: between runs the CPU goes to decoding
    the next images (a reader thread, the server's other requests); +5-8 % end to end on 2 cores."""
    import os

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def fold_constants(path: str | Path):
    """``path``'s model after ONNX Runtime's basic (portable) graph optimisations, as an ``onnx.ModelProto``."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "folded.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3  # its notes on initializers it drops are not for the user
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(out))


def _attribute(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constant(inits: dict, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[name]) if name in inits else None


def _spatial_zero_pads(node, inits: dict) -> list[int] | None:
    """``[top, left, bottom, right]`` if ``node`` is a constant zero Pad of an NCHW tensor's H and W only."""
    if node.op_type != "Pad" or len(node.input) < 2 or _attribute(node, "mode", b"constant") not in (b"constant", "constant"):
        return None
    pads = _constant(inits, node.input[1])
    if pads is None or pads.size != 8:
        return None
    if len(node.input) > 2 and node.input[2]:
        value = _constant(inits, node.input[2])
        if value is None or np.any(value):
            return None
    if len(node.input) > 3 and node.input[3]:  # explicit axes: leave it alone
        return None
    pads = [int(p) for p in pads]
    if any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        return None
    return [pads[2], pads[3], pads[6], pads[7]]


def fuse_pad_into_conv(model) -> int:
    """Fold constant zero spatial ``Pad`` nodes into the ``Conv`` reading them (in place); returns how many."""
    from onnx import helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    graph_outputs = {o.name for o in graph.output}
    fused = []
    for node in graph.node:
        pads = _spatial_zero_pads(node, inits)
        users = readers[node.output[0]]
        if pads is None or len(users) != 1 or users[0].op_type != "Conv" or node.output[0] in graph_outputs:
            continue
        conv = users[0]
        if _attribute(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"", ""):
            continue
        old = list(_attribute(conv, "pads", [0, 0, 0, 0]))
        for a in [a for a in conv.attribute if a.name == "pads"]:
            conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", [o + p for o, p in zip(old, pads)]))
        conv.input[0] = node.input[0]
        fused.append(node)
    for node in fused:
        graph.node.remove(node)
    return len(fused)


def prune_initializers(model) -> int:
    """Remove initializers no node reads (in place); returns how many."""
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return len(unused)


def optimise_for_inference(path: str | Path):
    """All passes above on the model at ``path``; returns the resulting ``onnx.ModelProto``."""
    model = fold_constants(path)
    fuse_pad_into_conv(model)
    prune_initializers(model)
    return model
