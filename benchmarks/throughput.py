"""End-to-end CPU throughput, accuracy against fp32, and server latency, per runtime, in one run.

Every variant runs the same :class:`cxrdx.inference.predictor.Predictor` path
(``predict_sources``: hardened decode from file bytes in memory, resize,
normalise, batch, model, softmax) and differs only in the model call:

* ``torch-eager``  ``torch.no_grad()``, NCHW, fp32: the reference (``fp32``)
* ``torch``        the ``torch`` runtime (inference mode)
* ``torch-bf16``   the ``torch-bf16`` runtime: bf16 autocast + channels_last (AVX512-BF16 / AMX where present)
* ``onnx``         the ``onnx`` runtime: ONNX Runtime fp32 (``cxrdx export --onnx``)
* ``onnx-int8``    the ``onnx-int8`` runtime: static QDQ int8 (``cxrdx export --onnx --quantize int8``)
* ``torch-channels-last``, ``torch-compile``  with ``--all-torch``

The images are the run's whole held-out split (``split.csv``, ``part == test``),
so each variant's class agreement and max probability difference against fp32
come from all of them. Variants run interleaved for ``--rounds`` rounds, so a
background load hits all alike (the load average is recorded at start and
end). Batch-1 latency goes through the server's path
(:class:`cxrdx.serve.service.ModelService`: ``prepare`` then ``score``).
For scale, ``fp32_stability`` says how often fp32 itself keeps its class on the same images after one
JPEG round trip at quality 95 and one grey level of Gaussian noise (:mod:`cxrdx.evaluation.stability`):
an approximate runtime cannot be asked to agree with fp32 better than fp32 agrees with itself there.

    python benchmarks/throughput.py --run runs/demo --threads 2 --rounds 3 --name cpu-2core
    python benchmarks/render_readme.py          # README performance table from benchmarks/results/*.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_VARIANTS = "torch-eager,torch,torch-bf16,onnx,onnx-int8"
EXACT = {"torch-eager": "reference", "torch": "fp32", "torch-channels-last": "fp32", "torch-compile": "fp32",
         "onnx": "fp32", "torch-bf16": "bf16 (approximate)", "onnx-int8": "int8 (approximate)"}
SERVED = {"torch", "torch-bf16", "onnx", "onnx-int8"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/demo"), help="Trained run folder (with split.csv).")
    p.add_argument("--images", type=int, default=0, help="Images timed per round (default: the whole held-out split).")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="Comma-separated (see above).")
    p.add_argument("--all-torch", action="store_true", help="Also torch-channels-last and torch-compile (minutes to compile).")
    p.add_argument("--latency-images", type=int, default=64, help="Batch-1 requests per served runtime.")
    p.add_argument("--calibration-images", type=int, default=128, help="For a missing model.int8.onnx.")
    p.add_argument("--no-stability", dest="stability", action="store_false",
                   help="Skip fp32's own stability (JPEG q95 round trip, one grey level of noise) on the held-out split.")
    p.add_argument("--name", default="cpu", help="Writes benchmarks/results/<name>.json.")
    p.add_argument("--json", type=Path, default=None, help="Write here instead.")
    return p.parse_args(argv)


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), model)
        flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    except OSError:
        pass
    from cxrdx.inference.fast_torch import cpu_bf16_kind

    return {"model": model, "cores": os.cpu_count(), "bf16": cpu_bf16_kind(),
            "flags": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni"})}


def held_out(run: Path, n: int) -> list[tuple[str, bytes]]:
    import pandas as pd

    split = pd.read_csv(run / "split.csv")
    paths = split.loc[split["part"] == "test", "image"].astype(str).tolist()
    if not paths:
        raise SystemExit(f"{run}/split.csv has no test rows")
    return [(p, Path(p).read_bytes()) for p in paths[: n or None]]


def ensure_exports(run: Path, calibration_images: int, variants: list[str]) -> tuple[dict, dict | None]:
    """``model.onnx`` (re-exported when missing or stale) and ``model.int8.onnx``; seconds spent, int8 info."""
    from cxrdx.inference.onnx_export import export_run
    from cxrdx.inference.onnx_runtime import OnnxModelError, OnnxPredictor
    from cxrdx.inference.quantize import INT8_FILE, quantize_run

    setup: dict[str, float] = {}
    if not {"onnx", "onnx-int8"} & set(variants):
        return setup, None
    try:
        OnnxPredictor.from_run_dir(run)
    except OnnxModelError:
        t = time.perf_counter()
        export_run(run)
        setup["onnx_export_s"] = time.perf_counter() - t
    if "onnx-int8" not in variants:
        return setup, None
    try:
        meta = OnnxPredictor.from_run_dir(run, file=INT8_FILE).meta
    except OnnxModelError:
        t = time.perf_counter()
        quantize_run(run, images=calibration_images)
        setup["int8_quantize_s"] = time.perf_counter() - t
        meta = OnnxPredictor.from_run_dir(run, file=INT8_FILE).meta
    return setup, meta.get("quantization")


def build_predictors(run: Path, variants: list[str], batch_size: int, threads: int) -> dict:
    from cxrdx.inference.predictor import Predictor
    from cxrdx.inference.runtimes import create_predictor
    from cxrdx.models.outputs import probabilities
    from cxrdx.models.run import load_run

    class EagerPredictor(Predictor):
        def probabilities(self, batch: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return probabilities(self.model(batch)).numpy()

    class ChannelsLastPredictor(Predictor):
        def __init__(self, model, compile_: bool = False, **kw):
            super().__init__(model.to(memory_format=torch.channels_last), **kw)
            self.forward = torch.compile(self.model, dynamic=False) if compile_ else self.model

        @torch.inference_mode()
        def probabilities(self, batch: torch.Tensor) -> np.ndarray:
            return probabilities(self.forward(batch.contiguous(memory_format=torch.channels_last))).numpy()

    preds = {}
    for name in variants:
        if name == "torch-eager":
            preds[name] = EagerPredictor(load_run(run), batch_size=batch_size)
        elif name in ("torch-channels-last", "torch-compile"):
            preds[name] = ChannelsLastPredictor(load_run(run), compile_=name == "torch-compile", batch_size=batch_size)
        else:  # a registered runtime, exactly as `cxrdx predict --runtime NAME` builds it (no input guard: speed only)
            preds[name] = create_predictor(run, name, batch_size=batch_size, threads=threads, guard=False)
    return preds


def probs_of(results, classes) -> np.ndarray:
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} images failed, e.g. {failed[0].source}: {failed[0].error}")
    return np.array([[r.probabilities[c] for c in classes] for r in results])


def decode_only_rate(pred, sources) -> float:
    """Images/s of the shared read + preprocess path alone (no model), one thread."""
    from cxrdx.data.io import read_image

    t = time.perf_counter()
    for name, data in sources:
        pred.tensor(read_image(data, name=name, limits=pred.limits))
    return len(sources) / (time.perf_counter() - t)


def server_latency(run: Path, runtime: str, threads: int, sources) -> dict:
    """Batch-1 latency (ms) through :class:`ModelService` (decode + preprocess + model, as POST /v1/predict)."""
    from cxrdx.config import ServeConfig
    from cxrdx.serve.service import ModelService

    service = ModelService(ServeConfig(model_dir=str(run), runtime=runtime, threads=threads))
    for _, data in sources[:3]:
        service.score(service.prepare(data))
    times = []
    for _, data in sources:
        t = time.perf_counter()
        service.score(service.prepare(data))
        times.append((time.perf_counter() - t) * 1000)
    return {"latency_ms_p50": float(np.percentile(times, 50)), "latency_ms_p95": float(np.percentile(times, 95)),
            "latency_requests": len(times)}


def fp32_stability(run: Path, pred, images: list[tuple[str, bytes]]) -> dict:
    """:func:`cxrdx.evaluation.stability.prediction_stability` of the fp32 predictor ``pred`` on ``images``."""
    import pandas as pd

    from cxrdx.data.io import read_image
    from cxrdx.evaluation.stability import prediction_stability

    patient = pd.read_csv(run / "split.csv", dtype={"patient_id": str}).set_index("image")["patient_id"]
    return prediction_stability(pred, [b for _, b in images], [patient.get(p, p) for p, _ in images],
                                read=lambda data: read_image(data, limits=pred.limits))


def run(args: argparse.Namespace) -> dict:
    from cxrdx.models.run import model_identity

    torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.all_torch:
        variants += [v for v in ("torch-channels-last", "torch-compile") if v not in variants]
    if "torch-eager" not in variants:
        variants.insert(0, "torch-eager")  # the fp32 reference
    load_start = os.getloadavg()
    all_images = held_out(args.run, 0)
    timed = all_images[: args.images or None]
    setup, int8_info = ensure_exports(args.run, args.calibration_images, variants)
    preds = build_predictors(args.run, variants, args.batch_size, args.threads)
    for name, pred in preds.items():  # warm-up (and torch.compile's compilation)
        t = time.perf_counter()
        pred.predict_sources(timed[: 2 * args.batch_size])
        setup[f"{name}_warmup_s"] = time.perf_counter() - t
    rates: dict[str, list[float]] = {name: [] for name in preds}
    probs: dict[str, np.ndarray] = {}
    decode_rates = []
    for _ in range(args.rounds):
        for name, pred in preds.items():
            t = time.perf_counter()
            results = pred.predict_sources(timed)
            rates[name].append(len(timed) / (time.perf_counter() - t))
            if len(timed) == len(all_images):
                probs[name] = probs_of(results, pred.classes)
        decode_rates.append(decode_only_rate(preds["torch-eager"], timed))
    for name, pred in preds.items():  # agreement over the whole held-out split when fewer images were timed
        if name not in probs:
            probs[name] = probs_of(pred.predict_sources(all_images), pred.classes)
    ref = probs["torch-eager"]
    latency = {name: server_latency(args.run, name, args.threads, all_images[: args.latency_images])
               for name in variants if name in SERVED and args.latency_images > 0}
    eager = statistics.median(rates["torch-eager"])
    stable_by = "onnx" if "onnx" in preds else "torch-eager"  # fp32 either way; ONNX is the faster one
    rows = [{
        "variant": name, "precision": EXACT.get(name, "?"),
        "median_img_s": statistics.median(r), "best_img_s": max(r), "rounds_img_s": r,
        "speedup_vs_eager": statistics.median(r) / eager,
        "class_agreement_vs_fp32": float((probs[name].argmax(1) == ref.argmax(1)).mean()),
        "max_abs_prob_diff_vs_fp32": float(np.abs(probs[name] - ref).max()),
        **latency.get(name, {}),
    } for name, r in rates.items()]
    return {
        "benchmark": "throughput",
        "what": "end-to-end images/s: file bytes in memory -> decode -> resize/normalise -> model -> softmax probabilities",
        "generated_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python benchmarks/throughput.py", *sys.argv[1:]]),
        "device": {"kind": "cpu", **cpu_info()},
        "run": str(args.run), "model": model_identity(args.run).id,
        "held_out_images": len(all_images), "timed_images": len(timed),
        "batch_size": args.batch_size, "threads": args.threads, "rounds": args.rounds,
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
        "decode_preprocess_only_img_s": statistics.median(decode_rates),
        "reference": "torch-eager (fp32)",
        "rows": rows, "setup_s": setup, "int8_quantization": int8_info,
        "fp32_stability": ({"runtime": stable_by, **fp32_stability(args.run, preds[stable_by], all_images)}
                           if args.stability else None),
    }


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"End to end, batch {report['batch_size']}, {report['threads']} threads, {report['timed_images']} "
                        f"held-out images x {report['rounds']} rounds ({report['device']['model']})")
    for col in ("variant", "precision", "median img/s", "x eager", "agree vs fp32", "max |dp|", "p50 ms", "p95 ms"):
        table.add_column(col, justify="left" if col in ("variant", "precision") else "right")
    for r in report["rows"]:
        lat = (f"{r['latency_ms_p50']:.1f}", f"{r['latency_ms_p95']:.1f}") if "latency_ms_p50" in r else ("", "")
        table.add_row(r["variant"], r["precision"], f"{r['median_img_s']:.1f}", f"{r['speedup_vs_eager']:.2f}",
                      f"{r['class_agreement_vs_fp32']:.4f}", f"{r['max_abs_prob_diff_vs_fp32']:.1e}", *lat)
    console = Console()
    console.print(table)
    if report.get("fp32_stability"):
        from cxrdx.evaluation.tables import stability_table

        console.print(stability_table(report["fp32_stability"]))
    console.print(f"decode + preprocess alone: {report['decode_preprocess_only_img_s']:.0f} img/s; load average start "
                  + ", ".join(f"{x:.2f}" for x in report["load_average_start"]) + "; end "
                  + ", ".join(f"{x:.2f}" for x in report["load_average_end"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_table(report)
    out = args.json or RESULTS / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
