"""``cxrdx train``, ``evaluate``, ``predict`` and ``demo``."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from .common import ConfigOpt, DataOpt, ManifestOpt, SetOpt, build_config, console, err_console, friendly_errors


def _print_outcome(metrics: dict, title: str) -> None:
    from ..evaluation.tables import confusion_table, metrics_table

    console.print(metrics_table(metrics, title=title))
    console.print(confusion_table(metrics))


@friendly_errors
def train(
    config: Optional[Path] = ConfigOpt,
    data: Optional[Path] = DataOpt,
    manifest: Optional[Path] = ManifestOpt,
    backbone: Optional[str] = typer.Option(None, help="tf_efficientnet_lite0 | densenet121 | resnetv2_152 | vgg19"),
    head: Optional[str] = typer.Option(None, help="lstm | gru | bilstm | bigru | attention | pool"),
    weights: Optional[str] = typer.Option(None, help="imagenet | none | path to backbone weights"),
    task: Optional[str] = typer.Option(None, help="3class | binary"),
    benchmark: Optional[str] = typer.Option(None, help="Keep only rows of this benchmark (e.g. darkcovidnet)."),
    epochs: Optional[int] = typer.Option(None, help="Head-training epochs."),
    finetune_blocks: Optional[int] = typer.Option(None, "--finetune-blocks", help="Stage (b): unfreeze the last N backbone blocks."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/demo)."),
    resume: bool = typer.Option(False, help="Resume an interrupted fine-tuning run from its run folder."),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Train a model: cached frozen features -> head (-> optional fine-tuning); test on held-out patients."""
    from ..training.pipeline import run_training

    cfg = build_config(
        config, overrides, **{
            "data.root": data, "data.manifest": manifest, "model.backbone": backbone, "model.head": head,
            "model.weights": weights, "data.task": task, "data.benchmark": benchmark, "train.epochs": epochs,
            "train.finetune_blocks": finetune_blocks, "out_dir": out,
        },
    )
    outcome = run_training(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    _print_outcome(outcome.metrics, f"Held-out test patients ({cfg.model.backbone} + {cfg.model.head})")
    for path, err in outcome.failures:
        err_console.print(f"[yellow]skipped[/] {err}")
    console.print(f"run folder: [bold]{outcome.run_dir}[/] ({outcome.timings['total_s']:.0f} s)")


@friendly_errors
def evaluate(
    run_dir: Path = typer.Argument(Path("runs/demo"), help="Run folder from `cxrdx train`."),
    data: Optional[Path] = DataOpt,
    manifest: Optional[Path] = ManifestOpt,
    part: str = typer.Option("test", help="Which rows of the run's split.csv to score: test | val | train | all. Ignored with --data/--manifest."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON here."),
) -> None:
    """Score a trained model: accuracy, per-class sensitivity / specificity / precision / F1 / AUC, confusion matrix."""
    import pandas as pd

    from ..config import Config
    from ..data.manifest import load_manifest
    from ..evaluation.bootstrap import metrics_with_ci
    from ..inference.predictor import predict_manifest
    from ..training.checkpoint import load_checkpoint

    model = load_checkpoint(run_dir)
    cfg = Config.from_dict(json.loads((run_dir / "config.json").read_text())) if (run_dir / "config.json").is_file() else Config()
    classes = tuple(model.classes)
    if data or manifest:
        df = load_manifest(data or (manifest.parent if manifest else None), manifest, classes=classes)
    else:
        split_file = run_dir / "split.csv"
        if not split_file.is_file():
            raise FileNotFoundError(f"{split_file} not found: pass --data or --manifest")
        split = pd.read_csv(split_file, dtype={"patient_id": str})
        df = split if part == "all" else split[split["part"] == part]
        df = df.assign(target=[classes.index(lab) for lab in df["label"]]).reset_index(drop=True)
    probs, kept, failures = predict_manifest(model, df, cfg.data.resolved_cache_dir())
    metrics = metrics_with_ci(kept["target"].to_numpy(), probs, kept["patient_id"].to_numpy(), classes)
    _print_outcome(metrics, f"{run_dir} on {'given data' if data or manifest else part + ' split'}")
    for path, err in failures:
        err_console.print(f"[yellow]skipped[/] {err}")
    if json_out:
        json_out.write_text(json.dumps(metrics, indent=2))
        console.print(f"wrote {json_out}")


@friendly_errors
def predict(
    paths: list[Path] = typer.Argument(..., help="Image files (PNG/JPEG/DICOM) or folders."),
    model_dir: Path = typer.Option(Path("runs/demo"), "--model", "-m", help="Run folder with model.safetensors + model.json."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write results to .csv or .json (default: print CSV)."),
    runtime: str = typer.Option("torch", help="torch | onnx"),
) -> None:
    """Class probabilities for each image. Unreadable files are reported and skipped, never fatal."""
    from ..inference.predictor import Predictor
    from ..training.checkpoint import load_checkpoint

    if runtime == "onnx":
        from ..serve.onnx_runtime import OnnxPredictor

        predictor = OnnxPredictor.from_run_dir(model_dir)
    else:
        predictor = Predictor(load_checkpoint(model_dir))
    t = time.perf_counter()
    results = predictor.predict_paths(paths)
    elapsed = time.perf_counter() - t
    classes = predictor.classes
    rows = [
        {"file": r.source, "predicted": r.predicted or "", **{f"p_{c}": (f"{r.probabilities[c]:.6f}" if r.ok else "") for c in classes},
         "error": "" if r.ok else f"{r.error.code}: {r.error}"}
        for r in results
    ]
    if out and out.suffix.lower() == ".json":
        out.write_text(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        fh = open(out, "w", newline="") if out else sys.stdout
        writer = csv.DictWriter(fh, fieldnames=["file", "predicted", *[f"p_{c}" for c in classes], "error"])
        writer.writeheader()
        writer.writerows(rows)
        if out:
            fh.close()
    bad = [r for r in results if not r.ok]
    for r in bad:
        err_console.print(f"[yellow]skipped[/] {r.error}")
    err_console.print(f"{len(results) - len(bad)} predicted, {len(bad)} skipped in {elapsed:.2f} s" + (f"; wrote {out}" if out else ""))


@friendly_errors
def demo(
    data: Optional[Path] = DataOpt,
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Train the default model on cxr3, test it on held-out patients, write runs/demo/metrics.json."""
    from ..training.pipeline import run_training

    cfg = build_config(config, overrides, **{"data.root": data, "out_dir": out})
    root = cfg.data.resolved_root()
    console.rule("[bold]cxrdx demo")
    console.print(f"data: {root}\nmodel: {cfg.model.backbone} ({cfg.model.weights}) + {cfg.model.head} head, task {cfg.data.task}")
    outcome = run_training(cfg)
    s = outcome.split_sizes
    console.print(
        "patient-level split: "
        + ", ".join(f"{k} {v['images']} images / {v['patients']} patients" for k, v in s.items())
    )
    _print_outcome(outcome.metrics, "Held-out test patients")
    m = outcome.metrics
    ci = m.get("ci", {})

    def _ci(values) -> str:
        return f" [{values[0]:.3f}, {values[1]:.3f}]" if values and values[0] is not None else ""

    console.print(f"[bold]test accuracy {m['accuracy']:.3f}{_ci(ci.get('accuracy'))}[/] (95% CI, patient bootstrap); " + "; ".join(
        f"{c}: sensitivity {v['sensitivity']:.3f}{_ci(ci.get('per_class', {}).get(c, {}).get('sensitivity'))}, "
        f"specificity {v['specificity']:.3f}{_ci(ci.get('per_class', {}).get(c, {}).get('specificity'))}"
        for c, v in m["per_class"].items()
    ))
    console.print(f"wrote {outcome.run_dir / 'metrics.json'} in {outcome.timings['total_s']:.0f} s")
    console.print("[dim]Research tool, not a diagnosis. Covid and normal images come from different sources; see `cxrdx report` for the source-confounding check.[/]")


def register(app: typer.Typer) -> None:
    for fn in (train, evaluate, predict, demo):
        app.command()(fn)
