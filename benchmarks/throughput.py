"""End-to-end CPU throughput: PNG decode -> preprocess -> model -> probabilities, per runtime, in one run.

Every variant runs the same :class:`cxrdx.inference.Predictor` code path
(``predict_paths``: hardened read, resize, normalise, batch, model, softmax) and
differs only in the model call:

* ``torch-eager``          ``torch.no_grad()``, NCHW, no compilation (the baseline)
* ``torch-inference-mode`` ``torch.inference_mode()`` (what ``Predictor`` ships with)
* ``torch-channels-last``  inference mode + channels_last weights and inputs
* ``torch-compile``        inference mode + channels_last + ``torch.compile`` (compile time reported apart)
* ``onnxruntime``          the exported ONNX graph (``cxrdx export --onnx``) in ONNX Runtime

Variants run interleaved for ``--rounds`` rounds so that a background load hits
all of them alike; the table gives the median and best round.

    python benchmarks/throughput.py --threads 2 --batch-size 16 --images 320 --json runs/throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None,
                   help="Run folder; default: tf_efficientnet_lite0 (ImageNet) + bilstm head with seed-0 weights "
                        "(speed does not depend on the head's trained values).")
    p.add_argument("--data", type=Path, default=None, help="cxr3 folder (default: cxrdx.config.default_data_root()).")
    p.add_argument("--images", type=int, default=320, help="Images per round (a multiple of the batch size).")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="Skip torch.compile (it takes minutes to compile).")
    p.add_argument("--json", type=Path, default=None, help="Write the results here as JSON.")
    return p.parse_args(argv)


def pick_images(data: Path | None, n: int) -> list[str]:
    from cxrdx.config import default_data_root
    from cxrdx.data.manifest import load_manifest

    df = load_manifest(data or default_data_root())
    step = max(1, len(df) // n)
    paths = [str(p) for p in df["image"].iloc[::step][:n]]
    for p in paths:  # warm the OS page cache so that every variant reads from memory alike
        Path(p).read_bytes()
    return paths


def default_run_dir(tmp: Path) -> Path:
    from cxrdx.models.factory import create_model
    from cxrdx.models.run import save_run

    torch.manual_seed(0)
    save_run(create_model("tf_efficientnet_lite0", "bilstm", weights="imagenet"), tmp / "bench-model")
    return tmp / "bench-model"


def build_predictors(run_dir: Path, batch_size: int, threads: int, use_compile: bool) -> tuple[dict, dict]:
    from cxrdx.inference.onnx_export import ONNX_FILE, export_run
    from cxrdx.inference.onnx_runtime import OnnxPredictor
    from cxrdx.inference.predictor import Predictor
    from cxrdx.models.outputs import probabilities
    from cxrdx.models.run import load_run

    class EagerPredictor(Predictor):
        def probabilities(self, batch: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return probabilities(self.model(batch)).numpy()

    class ChannelsLastPredictor(Predictor):
        def __init__(self, model, **kw):
            super().__init__(model.to(memory_format=torch.channels_last), **kw)
            self.forward = self.model

        @torch.inference_mode()
        def probabilities(self, batch: torch.Tensor) -> np.ndarray:
            return probabilities(self.forward(batch.contiguous(memory_format=torch.channels_last))).numpy()

    class CompiledPredictor(ChannelsLastPredictor):
        def __init__(self, model, **kw):
            super().__init__(model, **kw)
            self.forward = torch.compile(self.model, dynamic=False)

    setup: dict[str, float] = {}
    preds = {
        "torch-eager": EagerPredictor(load_run(run_dir), batch_size=batch_size),
        "torch-inference-mode": Predictor(load_run(run_dir), batch_size=batch_size),
        "torch-channels-last": ChannelsLastPredictor(load_run(run_dir), batch_size=batch_size),
    }
    if use_compile:
        preds["torch-compile"] = CompiledPredictor(load_run(run_dir), batch_size=batch_size)
    onnx_path = run_dir / ONNX_FILE
    t = time.perf_counter()
    if not onnx_path.is_file():
        export_run(run_dir)
    setup["onnx_export_s"] = time.perf_counter() - t
    preds["onnxruntime"] = OnnxPredictor.from_run_dir(run_dir, batch_size=batch_size, threads=threads)
    return preds, setup


def warm_up(preds: dict, paths: list[str], batch_size: int, setup: dict) -> None:
    for name, pred in preds.items():
        t = time.perf_counter()
        pred.predict_paths(paths[: 2 * batch_size])
        setup[f"{name}_warmup_s"] = time.perf_counter() - t


def decode_only_rate(pred, paths: list[str]) -> float:
    """Images/s of the shared read + preprocess path alone (no model)."""
    from cxrdx.data.io import read_image

    t = time.perf_counter()
    for p in paths:
        pred.tensor(read_image(p, limits=pred.limits))
    return len(paths) / (time.perf_counter() - t)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    paths = pick_images(args.data, args.images)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.model or default_run_dir(Path(tmp))
        preds, setup = build_predictors(run_dir, args.batch_size, args.threads, not args.no_compile)
        warm_up(preds, paths, args.batch_size, setup)
        rates: dict[str, list[float]] = {name: [] for name in preds}
        probs: dict[str, np.ndarray] = {}
        decode_rates = []
        for _ in range(args.rounds):
            for name, pred in preds.items():
                t = time.perf_counter()
                results = pred.predict_paths(paths)
                elapsed = time.perf_counter() - t
                failed = [r for r in results if not r.ok]
                if failed:
                    raise SystemExit(f"{name}: {len(failed)} images failed, e.g. {failed[0].error}")
                rates[name].append(len(paths) / elapsed)
                probs[name] = np.array([[r.probabilities[c] for c in pred.classes] for r in results])
            decode_rates.append(decode_only_rate(preds["torch-eager"], paths))
    eager = statistics.median(rates["torch-eager"])
    torch_best = max((n for n in rates if n.startswith("torch-") and n != "torch-eager"),
                     key=lambda n: statistics.median(rates[n]))
    rows = [
        {
            "variant": name,
            "median_img_s": statistics.median(r),
            "best_img_s": max(r),
            "rounds_img_s": r,
            "speedup_vs_eager": statistics.median(r) / eager,
            "max_abs_diff_vs_eager": float(np.abs(probs[name] - probs["torch-eager"]).max()),
        }
        for name, r in rates.items()
    ]
    return {
        "what": "end-to-end images/s: PNG read+decode -> resize/normalise -> model -> softmax probabilities",
        "model": str(args.model or "tf_efficientnet_lite0+bilstm (ImageNet backbone, seed-0 head)"),
        "images": len(paths), "batch_size": args.batch_size, "threads": args.threads, "rounds": args.rounds,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
        "decode_preprocess_only_img_s": statistics.median(decode_rates),
        "best_torch_variant": torch_best,
        "rows": rows,
        "setup_s": setup,
    }


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"End-to-end throughput, batch {report['batch_size']}, {report['threads']} threads, "
                        f"{report['images']} cxr3 PNGs x {report['rounds']} rounds")
    for col in ("variant", "median img/s", "best img/s", "x eager", "max |dp| vs eager"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in report["rows"]:
        table.add_row(r["variant"], f"{r['median_img_s']:.1f}", f"{r['best_img_s']:.1f}",
                      f"{r['speedup_vs_eager']:.2f}", f"{r['max_abs_diff_vs_eager']:.1e}")
    console = Console()
    console.print(table)
    console.print(f"decode + preprocess alone: {report['decode_preprocess_only_img_s']:.0f} img/s; "
                  f"best torch variant: {report['best_torch_variant']}; load average at end: "
                  + ", ".join(f"{x:.2f}" for x in report["load_average_at_end"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
