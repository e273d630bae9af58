"""``cxrdx train``, ``evaluate``, ``predict`` and ``demo``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import typer

from ..config import ConfigError
from .common import ConfigOpt, DataOpt, ManifestOpt, SetOpt, build_config, console, err_console, friendly_errors, registered


def _print_outcome(metrics: dict, title: str) -> None:
    from ..evaluation.tables import confusion_table, metrics_table

    console.print(metrics_table(metrics, title=title))
    console.print(confusion_table(metrics))


def _print_skipped(failures) -> None:
    for _path, err in failures:
        err_console.print(f"[yellow]skipped[/] {err}")


@friendly_errors
def train(
    config: Optional[Path] = ConfigOpt,
    data: Optional[Path] = DataOpt,
    manifest: Optional[Path] = ManifestOpt,
    backbone: Optional[str] = typer.Option(None, help=registered("backbones")),
    head: Optional[str] = typer.Option(None, help=registered("heads")),
    weights: Optional[str] = typer.Option(None, help="imagenet | none | path to backbone weights"),
    task: Optional[str] = typer.Option(None, help=registered("tasks")),
    benchmark: Optional[str] = typer.Option(None, help="Keep only rows of this benchmark (" + registered("benchmarks") + ")."),
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
    _print_skipped(outcome.failures)
    console.print(f"run folder: [bold]{outcome.run_dir}[/] ({outcome.timings['total_s']:.0f} s)")


@friendly_errors
def evaluate(
    run_dir: Path = typer.Argument(Path("runs/demo"), help="Run folder from `cxrdx train`."),
    data: Optional[Path] = DataOpt,
    manifest: Optional[Path] = ManifestOpt,
    part: str = typer.Option("test", help="Which rows of the run's split.csv to score: test | val | train | all. Ignored with --data/--manifest."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON here."),
    stability: bool = typer.Option(False, "--stability/--no-stability", help="Also re-predict every image after a JPEG "
                                   "round trip (quality 95) and one grey level of noise: how often the class holds."),
    runtime: str = typer.Option("torch", help="Runtime of the stability check: " + registered("runtimes")),
) -> None:
    """Score a trained model: accuracy, per-class sensitivity / specificity / precision / F1 / AUC, confusion matrix."""
    from ..evaluation.evaluate import evaluate_run

    result = evaluate_run(run_dir, data=data, manifest=manifest, part=part, stability=stability, runtime=runtime)
    _print_outcome(result.metrics, result.title)
    if result.stability is not None:
        from ..evaluation.tables import stability_table

        console.print(stability_table(result.stability))
        for item in result.stability.get("skipped", []):
            err_console.print(f"[yellow]stability: skipped[/] {item['error']}")
    _print_skipped(result.failures)
    if json_out:
        payload = result.metrics if result.stability is None else {**result.metrics, "stability": result.stability}
        json_out.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {json_out}")


@friendly_errors
def predict(
    paths: list[Path] = typer.Argument(..., help="Image files (PNG/JPEG/DICOM) or folders."),
    model_dir: Path = typer.Option(Path("runs/demo"), "--model", "-m", help="Run folder with model.safetensors + model.json."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write results to .csv or .json (default: print CSV)."),
    runtime: str = typer.Option("torch", help=registered("runtimes")),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Test-time augmentation: mean over each image and its mirror (torch runtime)."),
) -> None:
    """Class probabilities for each image. Unreadable files are reported and skipped, never fatal.

    Exit code 0 when at least one image was predicted, 1 when none was (every entry failed, or no image found).
    """
    from ..data.paths import IMAGE_SUFFIXES, expand_paths, is_folder
    from ..inference.output import write_predictions
    from ..inference.runtimes import create_predictor

    predictor = create_predictor(model_dir, runtime)
    if tta:
        if runtime != "torch":
            raise ConfigError("--tta runs on the torch runtime only; drop --runtime or --tta")
        predictor.tta = True
    empty = [p for p in paths if is_folder(p) and not expand_paths([p])]
    t = time.perf_counter()
    results = predictor.predict_paths(paths)
    elapsed = time.perf_counter() - t
    if results:
        write_predictions(results, predictor.classes, out)
    bad = [r for r in results if not r.ok]
    for r in bad:
        err_console.print(f"[yellow]skipped[/] {r.error}")
    for folder in empty:
        err_console.print(f"[yellow]skipped[/] {folder}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    done = len(results) - len(bad)
    wrote = f"; wrote {out}" if out and results else ""
    err_console.print(f"{done} predicted, {len(bad) + len(empty)} skipped in {elapsed:.2f} s{wrote}")
    if done == 0:
        err_console.print("[bold red]error:[/] no image was predicted" + ("" if results else ": no images found"))
        raise typer.Exit(1)


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
    from ..evaluation.results import PooledMetrics

    m = PooledMetrics.of(outcome.metrics)  # an undefined rate prints "undefined", never a crash or 0.000
    console.print(f"[bold]test accuracy {m.accuracy.text()}[/] (95% CI, patient bootstrap); " + "; ".join(
        f"{c}: sensitivity {m.per_class(c, 'sensitivity').text(missing='undefined')}, "
        f"specificity {m.per_class(c, 'specificity').text(missing='undefined')}"
        for c in m.class_names
    ))
    console.print(f"wrote {outcome.run_dir / 'metrics.json'} in {outcome.timings['total_s']:.0f} s")
    console.print("[dim]Research tool, not a diagnosis. Covid and normal images come from different sources; see `cxrdx report` for the source-confounding check.[/]")


def register(app: typer.Typer) -> None:
    for fn in (train, evaluate, predict, demo):
        app.command()(fn)
