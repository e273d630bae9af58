"""``cxrdx lungs``: train, run and evaluate the lung segmenter (U-Net on EfficientNet-Lite0)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.markup import escape

from .common import ConfigOpt, SetOpt, build_config, console, err_console, friendly_errors

lungs_app = typer.Typer(
    name="lungs",
    help="Lung segmentation: train a U-Net on lungseg, write lung-mask PNGs, report Dice/IoU on held-out patients.",
    no_args_is_help=True,
)


def _lung_errors(fn: Callable) -> Callable:
    """lungseg / segmenter-run problems become one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..data.lungseg import LungsegError
        from ..models.segmenter import SegmenterError

        try:
            return fn(*args, **kwargs)
        except (LungsegError, SegmenterError) as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(2) from None

    return friendly_errors(wrapper)


@lungs_app.command("train")
@_lung_errors
def train(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (segmenter.safetensors/.json/.onnx, split.csv)."),
    data: Optional[Path] = typer.Option(None, "--data", help="lungseg folder. Default: $CXRDX_LUNGSEG or ../shared/data/lungseg."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Also export segmenter.onnx (checked against torch)."),
) -> None:
    """Train the lung segmenter on lungseg (split grouped by patient, stratified by source); settings: lungs.*."""
    from ..training.segmenter import train_segmenter

    cfg = build_config(config, overrides, **{"lungs.data": str(data) if data else None}).lungs
    outcome = train_segmenter(cfg, out, export=onnx, echo=lambda m: console.print(escape(m)))
    console.print(f"[bold]{escape(str(outcome.run_dir))}[/]: best validation Dice {outcome.best_val_dice:.4f} "
                  f"(epoch {outcome.best_epoch}/{outcome.epochs_run}, {outcome.seconds_per_epoch:.0f} s per epoch). "
                  f"Next: cxrdx lungs evaluate {escape(str(outcome.run_dir))}")


@lungs_app.command("predict")
@_lung_errors
def predict(
    images: list[Path] = typer.Argument(..., help="Image files or folders (PNG, JPEG, DICOM ...)."),
    model: Path = typer.Option(..., "--model", "-m", help="Segmenter run folder (cxrdx lungs train --out)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for <image name>.png masks (0 / 255) and lungs.csv."),
    runtime: str = typer.Option("torch", "--runtime", help="torch or onnx (segmenter.onnx)."),
    batch_size: int = typer.Option(8, "--batch-size"),
) -> None:
    """Write one lung-mask PNG per image at the image's size; bad files and no-lung images are reported, not fatal."""
    import csv

    from ..features.lungs import create_lung_predictor, write_mask_png

    predictor = create_lung_predictor(model, runtime=runtime, batch_size=batch_size)
    results = predictor.predict_paths(images)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    rows = []
    for res in results:
        row = res.to_dict()
        if res.mask is not None:
            stem = Path(res.source).stem
            name, k = f"{stem}.png", 1
            while name in used:
                k += 1
                name = f"{stem}-{k}.png"
            used.add(name)
            write_mask_png(res.mask, out / name)
            row["mask"] = name
        rows.append(row)
        if res.error is not None:
            err_console.print(f"[yellow]{escape(res.error.code)}[/]: {escape(str(res.error))}")
    with open(out / "lungs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "mask", "lung_fraction", "bbox", "error"])
        for r in rows:
            frac = "" if r["lung_fraction"] is None else f"{r['lung_fraction']:.4f}"
            bbox = " ".join(map(str, r["bbox"])) if "bbox" in r else ""
            writer.writerow([r["source"], r.get("mask", ""), frac, bbox, r.get("error", {}).get("code", "")])
    ok = sum(r.ok for r in results)
    console.print(f"lungs found in {ok}/{len(results)} images; {len(used)} mask PNGs written to {escape(str(out))} "
                  f"(summary with errors: lungs.csv)")
    if ok < len(results):
        raise typer.Exit(1)


def _cell(entry: dict | None) -> str:
    if not entry or entry.get("mean") is None:
        return "-"
    lo, hi = entry["ci"]
    return f"{entry['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


@lungs_app.command("evaluate")
@_lung_errors
def evaluate(
    run: Path = typer.Argument(..., help="Segmenter run folder."),
    data: Optional[Path] = typer.Option(None, "--data", help="lungseg folder (default: the one the run was trained on)."),
    part: str = typer.Option("test", "--part", help="Which part of the run's split: test | val | train."),
    runtime: str = typer.Option("torch", "--runtime", help="torch or onnx."),
    bootstrap: int = typer.Option(2000, "--bootstrap", help="Patient bootstrap resamples for the 95% CIs."),
) -> None:
    """Dice and IoU on the run's held-out patients, overall and per source, with patient-bootstrap 95% CIs."""
    from rich.console import Console
    from rich.table import Table

    from ..evaluation.segmentation import evaluate_segmenter

    result = evaluate_segmenter(run, data=data, part=part, runtime=runtime, n_boot=bootstrap)
    path = result.save(run)
    s = result.summary
    table = Table(title=f"{result.title} ({s['images']} images, 95% patient-bootstrap CIs)")
    for col in ("source", "images", "patients", "Dice", "IoU", "all-lung Dice"):
        table.add_column(col, justify="left" if col == "source" else "right", no_wrap=True)
    blocks = [*s["per_source"].items(), ("all", s["all"])]
    for name, b in blocks:
        if not b:
            continue
        table.add_row(f"[bold]{name}[/]" if name == "all" else name, str(b["dice"]["n"]), str(b["dice"]["patients"]),
                      _cell(b["dice"]), _cell(b["iou"]), _cell(b["baseline_dice"]))
    Console(width=max(console.width, 120), soft_wrap=True).print(table)  # never squeeze the CIs
    if s["no_lungs"]:
        console.print(f"[yellow]{s['no_lungs']} image(s) where no lungs were found[/]")
    for f in s["failures"]:
        err_console.print(f"[yellow]{escape(f['error'])}[/]: {escape(f['message'])}")
    console.print(f"written: {escape(str(path))}")


def register(app: typer.Typer) -> None:
    app.add_typer(lungs_app, name="lungs")
