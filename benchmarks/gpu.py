"""GPU numbers in one script (a few minutes): inference variants and full fine-tuning speed, written as JSON.

Without a CUDA GPU it says so, writes a JSON that records it (``"gpu": null``)
and exits 0. With one (the first visible device) it measures, on the run's
held-out images (or synthetic inputs with ``--synthetic``):

* inference, model only, batch ``--batch-size`` (inputs already on the GPU):
  ``fp32``, ``bf16-autocast``, ``channels-last`` (+ bf16), ``torch-compile``
  (channels_last + bf16), and ONNX Runtime's ``CUDAExecutionProvider`` when the
  installed onnxruntime has it; each with class agreement / max probability
  difference against fp32 on the same images;
* end to end (file bytes -> decode on the CPU -> GPU model -> probabilities),
  batch 16, through :class:`cxrdx.inference.predictor.Predictor`, and the
  server path's batch-1 latency (p50 / p95 over ``--latency-images`` requests);
* full fine-tuning (every layer trainable, AdamW, bf16 autocast, batch 64, 224 px)
  of EfficientNet-Lite0 and DenseNet121: training images/s.

    python benchmarks/gpu.py --run runs/demo --name gpu
    python benchmarks/gpu.py --device cpu --steps 2 --synthetic --json /tmp/gpu-smoke.json   # code-path check on a CPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/demo"), help="Trained run folder (model + split.csv).")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke test of the code paths).")
    p.add_argument("--batch-size", type=int, default=64, help="Inference batch (model only).")
    p.add_argument("--images", type=int, default=512, help="Held-out images for inference / agreement (at most the split's).")
    p.add_argument("--repeats", type=int, default=20, help="Timed passes over the images per inference variant.")
    p.add_argument("--latency-images", type=int, default=100, help="Batch-1 requests timed for p50 / p95.")
    p.add_argument("--steps", type=int, default=20, help="Timed fine-tuning steps per backbone (after 3 warm-up).")
    p.add_argument("--finetune-batch", type=int, default=64)
    p.add_argument("--synthetic", action="store_true", help="Random inputs and a seed-0 model instead of a run.")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--name", default="gpu", help="Writes benchmarks/results/<name>.json.")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    sync(device)
    return (time.perf_counter() - t) / repeats, out


def load_inputs(args, device):
    from cxrdx.models.factory import create_model
    from cxrdx.models.run import load_run

    if args.synthetic or not (args.run / "split.csv").is_file():
        torch.manual_seed(0)
        model = create_model("tf_efficientnet_lite0", "bilstm", weights="imagenet")
        return model, torch.randn(args.images, 3, 224, 224), [], "synthetic"
    import pandas as pd

    from cxrdx.inference.predictor import Predictor

    model = load_run(args.run)
    split = pd.read_csv(args.run / "split.csv")
    paths = split.loc[split["part"] == "test", "image"].astype(str).tolist()[: args.images]
    pred = Predictor(model)
    from cxrdx.data.io import read_image

    x = torch.stack([pred.tensor(read_image(p)) for p in paths])
    return model, x, [(p, Path(p).read_bytes()) for p in paths], str(args.run)


def inference_rows(model, x: torch.Tensor, args, device) -> list[dict]:
    import copy

    from cxrdx.models.outputs import probabilities

    bs = args.batch_size
    batches = [x[i : i + bs].to(device) for i in range(0, len(x), bs)]

    def runner(net, bf16: bool, cl: bool):
        def run():
            outs = []
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                for b in batches:
                    outs.append(probabilities(net(b.contiguous(memory_format=torch.channels_last) if cl else b).float()))
            return torch.cat(outs).cpu().numpy()
        return run

    base = model.to(device).eval()
    cl = copy.deepcopy(base).to(memory_format=torch.channels_last)
    variants = {"fp32": runner(base, False, False), "bf16-autocast": runner(base, True, False),
                "channels-last-fp32": runner(cl, False, True), "channels-last-bf16": runner(cl, True, True)}
    if not args.no_compile:
        variants["torch-compile-bf16"] = runner(torch.compile(cl, dynamic=False), True, True)
    rows, ref = [], None
    for name, fn in variants.items():
        t0 = time.perf_counter()
        try:
            fn()  # compile / autotune
            warm = time.perf_counter() - t0
            sec, probs = timed(fn, device, args.repeats)
        except Exception as exc:  # noqa: BLE001 - one failing variant (a compiler error, say) is recorded, not fatal
            rows.append({"variant": name, "skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
            continue
        ref = probs if ref is None else ref
        rows.append({"variant": name, "img_s": len(x) / sec, "first_call_s": warm,
                     "class_agreement_vs_fp32": float((probs.argmax(1) == ref.argmax(1)).mean()),
                     "max_abs_prob_diff_vs_fp32": float(np.abs(probs - ref).max())})
    try:
        rows.append(onnx_cuda_row(model, x, args, ref))
    except Exception as exc:  # noqa: BLE001
        rows.append({"variant": "onnxruntime-cuda", "skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
    return rows


def onnx_cuda_row(model, x, args, ref) -> dict:
    """ONNX Runtime's CUDA provider on the exported model, when the installed onnxruntime has it."""
    import onnxruntime as ort

    row = {"variant": "onnxruntime-cuda"}
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {**row, "skipped": f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"}
    import tempfile

    from cxrdx.inference.onnx_export import export_model

    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(model.cpu(), Path(tmp) / "m.onnx")
        sess = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        arr = x.numpy().astype(np.float32)
        bs = args.batch_size

        def run():
            return np.concatenate([sess.run(None, {"image": arr[i : i + bs]})[0] for i in range(0, len(arr), bs)])

        sec, probs = timed(run, torch.device("cpu"), args.repeats)
    return {**row, "img_s": len(x) / sec, "class_agreement_vs_fp32": float((probs.argmax(1) == ref.argmax(1)).mean()),
            "max_abs_prob_diff_vs_fp32": float(np.abs(probs - ref).max()), "providers": sess.get_providers()}


def gpu_predictor(model, device, batch_size: int):
    """The CLI / server predictor (runtime ``torch-cuda``) with its model on ``device``; decoding stays on the CPU."""
    from cxrdx.inference.predictor import Predictor

    return Predictor(model.to(device).eval(), batch_size=batch_size)


def end_to_end_row(model, sources, device) -> dict | None:
    """File bytes -> CPU decode -> GPU model, batch 16, the predictor's path (decode is the CPU's share)."""
    if not sources:
        return None
    pred = gpu_predictor(model, device, 16)
    pred.predict_sources(sources[:32])
    sync(device)
    t = time.perf_counter()
    results = pred.predict_sources(sources)
    sync(device)
    sec = time.perf_counter() - t
    return {"variant": "end-to-end-fp32-batch16", "img_s": len(sources) / sec, "ok": sum(r.ok for r in results)}


def latency_row(model, sources, device, n: int) -> dict | None:
    """The server path at batch 1: one image's bytes -> decode -> model on ``device`` -> probabilities."""
    if not sources:
        return None
    pred = gpu_predictor(model, device, 1)
    pred.predict_sources(sources[:5])  # warm-up
    times = []
    for i in range(n):
        src = sources[i % len(sources)]
        sync(device)
        t = time.perf_counter()
        pred.predict_sources([src])
        sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return {"variant": "batch-1-fp32", "requests": n, "latency_ms_p50": float(np.percentile(times, 50)),
            "latency_ms_p95": float(np.percentile(times, 95))}


def finetune_rows(args, device) -> list[dict]:
    rows = []
    for backbone in ("tf_efficientnet_lite0", "densenet121"):
        try:
            rows.append(finetune_row(backbone, args, device))
        except Exception as exc:  # noqa: BLE001
            rows.append({"backbone": backbone, "skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    return rows


def finetune_row(backbone: str, args, device) -> dict:
    """Training images/s of ``backbone`` + pool head, every layer trainable."""
    from cxrdx.models.factory import create_model

    torch.manual_seed(0)
    # random initial weights: speed does not depend on their values, and no download is needed
    model = create_model(backbone, "pool", weights="none").to(device).to(memory_format=torch.channels_last)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.finetune_batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (args.finetune_batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    sec = (time.perf_counter() - t) / args.steps
    return {"backbone": backbone, "batch": args.finetune_batch, "precision": "bf16 autocast, channels_last",
            "layers": "all trainable", "head": "pool",
            "train_img_s": args.finetune_batch / sec,
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}


def versions() -> dict:
    import importlib.metadata as md

    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for dist in ("timm", "onnxruntime", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def run(args) -> dict:
    from cxrdx.models.run import model_identity

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    base = {"benchmark": "gpu", "generated_at": stamp, "command": " ".join(["python benchmarks/gpu.py", *sys.argv[1:]]),
            "versions": versions(), "cpu_cores": os.cpu_count()}
    if args.device == "cuda" and not torch.cuda.is_available():
        return {**base, "gpu": None, "note": "no CUDA GPU was available on this machine; nothing measured"}
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test, not a GPU figure)"
    model, x, sources, source = load_inputs(args, device)
    return {**base, "gpu": name, "inputs": source, "model": None if args.synthetic else model_identity(args.run).id,
            "images": len(x), "batch_size": args.batch_size,
            "inference": inference_rows(model, x, args, device),
            "end_to_end": end_to_end_row(model, sources, device),
            "latency": latency_row(model, sources, device, args.latency_images),
            "finetune": finetune_rows(args, device)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    out = args.json or RESULTS / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if report["gpu"] is None:
        print(f"{report['note']}; wrote {out}")
        return 0
    print(json.dumps({k: report[k] for k in ("gpu", "inference", "end_to_end", "latency", "finetune")}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
