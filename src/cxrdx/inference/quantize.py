"""``cxrdx export --onnx --quantize int8``: ONNX Runtime static int8 quantization of the exported graph.

QDQ format (``QuantizeLinear`` / ``DequantizeLinear`` pairs that ONNX Runtime
fuses into ``QLinearConv`` / ``QLinearAdd`` kernels: VNNI on AVX512-VNNI CPUs),
int8 weights per output channel, uint8 activations per tensor, ranges from the
min / max of calibration images: images of the run's own training part
(``split.csv``, ``part == train``), read and preprocessed by the very
:class:`~cxrdx.inference.onnx_runtime.OnnxPredictor` path that serves them.
Only the backbone's ``Conv`` / ``Clip`` / ``Add`` nodes are quantized; the RNN
head and the softmax stay fp32 (they cost < 2 % of the time).

The result is ``RUN_DIR/model.int8.onnx`` with the fp32 export's metadata plus
``quantization``: method, calibration images (how many, which part, seed, the
SHA-1 of their sorted paths) and a check against the fp32 graph on validation
images (class agreement, max probability difference). The runtime ``onnx-int8``
serves it. Accuracy is measured, not assumed: ``benchmarks/throughput.py`` scores
agreement with fp32 over the whole held-out split.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.io import read_image
from .onnx_export import INPUT_NAME, META_KEY, OUTPUT_NAME

INT8_FILE = "model.int8.onnx"
HEAD_PREFIXES = ("/model/head", "/Softmax")
"""Exported node names of the RNN head and the softmax: left in fp32."""
QUANTIZED_OPS = ["Conv", "Clip", "Add"]


class QuantizeError(RuntimeError):
    """No images to calibrate on, or no fp32 export to quantize."""


@dataclass
class QuantizeResult:
    path: Path
    info: dict
    """What was written to the file's metadata under ``quantization``."""


def split_images(run_dir: str | Path, part: str, n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` image paths of ``part`` of the run's ``split.csv``, drawn with ``seed``, in file order."""
    split_file = Path(run_dir) / "split.csv"
    if not split_file.is_file():
        raise QuantizeError(f"{split_file} not found: calibration needs the run's training images")
    paths = pd.read_csv(split_file).query("part == @part")["image"].astype(str).tolist()
    if not paths:
        raise QuantizeError(f"{split_file} has no {part!r} rows to calibrate on")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(paths), size=min(n, len(paths)), replace=False))
    return [paths[i] for i in pick]


def preprocessed_batches(predictor, paths: list[str], batch_size: int = 16) -> list[np.ndarray]:
    """``[b, 3, S, S]`` float32 batches of ``paths`` through ``predictor``'s read + preprocess path (bad files skipped)."""
    arrays = []
    for p in paths:
        try:
            arrays.append(predictor.tensor(read_image(p, limits=predictor.limits)).numpy())
        except Exception:  # noqa: BLE001 - an unreadable calibration image is skipped, not fatal
            continue
    return [np.stack(arrays[i : i + batch_size]).astype(np.float32) for i in range(0, len(arrays), batch_size)]


def _reader(batches: list[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {INPUT_NAME: batch}

    return Reader()


def quantize_onnx(fp32_path: str | Path, out: str | Path, batches: list[np.ndarray]) -> Path:
    """Static QDQ int8 quantization of ``fp32_path`` (backbone only), calibrated on ``batches``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    out = Path(out)
    head = [n.name for n in onnx.load(str(fp32_path)).graph.node if n.name.startswith(HEAD_PREFIXES)]
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(
            str(fp32_path), str(tmp), _reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=head,
        )
    tmp.replace(out)
    return out


def compare(reference, candidate, batches: list[np.ndarray]) -> dict:
    """Class agreement and max |probability difference| of two ONNX Runtime sessions on ``batches``."""
    ref = np.concatenate([reference.run([OUTPUT_NAME], {INPUT_NAME: b})[0] for b in batches])
    new = np.concatenate([candidate.run([OUTPUT_NAME], {INPUT_NAME: b})[0] for b in batches])
    return {"images": int(len(ref)), "class_agreement": float((ref.argmax(1) == new.argmax(1)).mean()),
            "max_abs_prob_diff": float(np.abs(ref - new).max())}


def _write_metadata(path: Path, meta: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    for entry in [e for e in proto.metadata_props if e.key == META_KEY]:
        proto.metadata_props.remove(entry)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    onnx.save(proto, str(path))


def quantize_run(run_dir: str | Path, *, images: int = 128, check_images: int = 64, seed: int = 0,
                 out: str | Path | None = None, threads: int | None = None) -> QuantizeResult:
    """``RUN_DIR/model.onnx`` (from ``cxrdx export --onnx``) -> ``RUN_DIR/model.int8.onnx`` (or ``out``)."""
    import onnxruntime as ort

    from ..models.onnx_graph import session_options
    from .onnx_runtime import OnnxPredictor

    run_dir = Path(run_dir)
    fp32 = OnnxPredictor.from_run_dir(run_dir, threads=threads)  # refuses a stale export
    paths = split_images(run_dir, "train", images, seed)
    batches = preprocessed_batches(fp32, paths)
    if not batches:
        raise QuantizeError(f"none of the {len(paths)} calibration images of {run_dir} could be read")
    out = Path(out) if out else run_dir / INT8_FILE
    quantize_onnx(fp32.path, out, batches)
    int8 = ort.InferenceSession(str(out), session_options(threads), providers=["CPUExecutionProvider"])
    check = compare(fp32.session, int8, preprocessed_batches(fp32, split_images(run_dir, "val", check_images, seed)))
    info = {
        "format": "QDQ", "weights": "int8, per output channel", "activations": "uint8, per tensor",
        "calibration": {"method": "MinMax", "part": "train", "images": int(sum(len(b) for b in batches)), "seed": seed,
                        "paths_sha1": hashlib.sha1("\n".join(paths).encode()).hexdigest()},
        "fp32_kept": "RNN head and softmax", "check_vs_fp32_on_val": check,
        "onnxruntime": ort.__version__,
    }
    _write_metadata(out, {**fp32.meta, "quantization": info})
    return QuantizeResult(out, info)

