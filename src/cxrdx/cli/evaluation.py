"""``cxrdx cv``, ``cxrdx compare`` and ``cxrdx report``: honest, patient-level evaluation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .common import ConfigOpt, DataOpt, ManifestOpt, SetOpt, build_config, console, friendly_errors


ImageLevelOpt = typer.Option(
    None, "--image-level/--no-image-level",
    help="Also run the top model on image-level (leaky) folds, to show the leakage effect. Default: on with --benchmark.")


def _default_out(kind: str) -> Path:
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _print_results(result: dict) -> None:
    from ..evaluation.tables import (architecture_table, benchmark_table, comparison_table, confusion_table, loso_overview,
                                     loso_table, macro_row_ci, metrics_table, unseen_selection_text)

    for task, res in result["tasks"].items():
        best = res["best"]  # a CVSummary
        if res.get("architectures") and len(res["architectures"]["rows"]) > 1:
            console.print(architecture_table(res["architectures"], title=f"{task}: the design's four architectures"))
        loso = res.get("loso")
        if loso:  # unseen hospitals first: the gap to the random split is the first thing to read
            console.rule(f"[bold]{task}: unseen hospitals (leave-one-source-out)[/]")
            console.print(loso_table(loso, title=f"{task}: unseen hospitals (leave-one-source-out), selected by validation: "
                                                 f"{loso['selected']}, roi {loso['roi']}"))
            if len(loso["candidates"]) > 1:
                console.print(loso_overview(loso))
            if loso.get("unseen_selection"):
                console.print(unseen_selection_text(loso["unseen_selection"]))
            for skip in loso["skipped"]:
                console.print(f"[yellow]not held out: {skip['source']} ({skip['n_images']} images): {skip['reason']}[/]")
            shape = loso.get("shape_only")
            if shape:
                lo, hi = shape["accuracy_ci"]
                console.print(f"[bold red]the image's shape alone (no pixels), unseen: {shape['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] "
                              f"over all held-out images (chance {shape['chance']['majority']:.3f}); "
                              + ", ".join(f"{r['source']} {r['accuracy']:.3f}" for r in shape["per_source"] if r["accuracy"] is not None)
                              + "[/]")
        proto = best.protocol
        console.rule(f"[bold]{task}[/] ({proto['n_images']} images, {proto['n_patients']} patients, {proto['folds']}-fold, {proto['label']})")
        if len(res["rows"]) > 1:
            console.print(comparison_table(res["rows"], title=f"{task}: ranked by {res['ranked_by']}"))
        console.print(metrics_table(best.pooled, title=f"{best.name}, pooled out-of-fold"))
        console.print(macro_row_ci(best.pooled))
        console.print(confusion_table(best.pooled))
        op = best.operating_point
        if op:
            console.print(f"operating point (covid threshold chosen on validation for sensitivity >= {op.target_sensitivity:.2f}): "
                          f"test sensitivity {op.sensitivity.text()}, specificity {op.specificity.text()}")
        line = f"ECE {best.ece:.3f}"
        if best.ece_scaled is not None:
            line += f" -> {best.ece_scaled:.3f} with temperature scaling"
        console.print(line)
        for name, s in (best.shortcut or {}).items():
            style = "bold red" if s["verdict"]["far_above_chance"] else "dim"
            console.print(f"[{style}]shortcut control ({name}): {s['verdict']['text']}[/]")
        for key in ("trained_without_lungs", "trained_on_border_only", "trained_on_shape_only"):
            if res.get(key):
                s = res[key]
                style = "bold red" if s["verdict"]["far_above_chance"] else "dim"
                console.print(f"[{style}]shortcut control ({key.replace('_', ' ')}): {s['verdict']['text']}[/]")
        for src in best.per_source or []:
            console.print(f"source {src['source']}: {src['n']} images {src['labels']}, accuracy {src['accuracy']:.3f}")
        if res.get("image_level"):
            console.print(f"[yellow]image-level (LEAKY) protocol, same model: accuracy {res['image_level'].pooled.accuracy.value:.3f} "
                          f"vs patient-level {best.pooled.accuracy.value:.3f}[/]")
    if result.get("benchmark"):
        console.print(benchmark_table(result["benchmark"]))


def _run(kind: str, cfg, req, out: Optional[Path]) -> None:
    from ..evaluation.compare import run_grid

    out_dir = out or _default_out(kind)
    result = run_grid(cfg, req, out_dir, log=console.print)
    _print_results(result)
    console.print(f"wrote {out_dir / 'evaluation.json'} in {result['seconds']:.0f} s; "
                  f"render it with [bold]cxrdx report {out_dir}[/]")


def _tasks(cfg, task: Optional[str], benchmark: Optional[str]) -> list[str]:
    from ..evaluation.benchmark import get_benchmark

    if task:
        return _split(task)
    if benchmark:
        return [t.name for t in get_benchmark(benchmark).tasks]
    return [cfg.data.task]


TaskOpt = typer.Option(None, help="Tasks from `cxrdx list tasks` (comma-separated for several). Default: data.task, or the benchmark's tasks.")
BenchmarkOpt = typer.Option(None, help="darkcovidnet: its 1,124 rows, 3-class and covid-vs-normal, beside the published image-level numbers.")
FoldsOpt = typer.Option(None, help="Number of patient-grouped folds (default 5).")
BlackoutOpt = typer.Option(True, "--blackout/--no-blackout", help="Shortcut control: score images with the lungs blacked out.")
ShapeOpt = typer.Option(True, "--shape/--no-shape",
                        help="Shortcut control: the label from the image's shape alone (aspect ratio, size; no pixels).")
BorderOpt = typer.Option(True, "--border/--no-border",
                         help="Shortcut control: only a frame at the image border kept (inside greyed out); features re-extracted once.")
ByOpt = typer.Option("patient", "--by", help="patient: random patient-grouped folds. source: also leave-one-source-out "
                     "(train on the other sources, test on each source with >= evaluation.min_source_images images), shown first.")


def _out_opt(kind: str):
    return typer.Option(None, "--out", "-o", help=f"Run folder (default runs/{kind}-<time>).")


def _request(cfg, *, models: list[str], backbones: list[str], task: Optional[str], benchmark: Optional[str],
             image_level: Optional[bool], blackout: bool, ensemble_top: int, command: str, border: bool = True, shape: bool = True,
             by: str = "patient", native_size: bool = False, tta: bool = False, backbone_ensemble: bool = True):
    from ..config import ConfigError
    from ..evaluation.compare import GridRequest

    if by not in ("patient", "source"):
        raise ConfigError(f"--by must be 'patient' or 'source', not {by!r}")
    return GridRequest(
        tasks=_tasks(cfg, task, benchmark), models=models, backbones=backbones, benchmark=benchmark,
        image_level=bool(benchmark) if image_level is None else image_level, blackout=blackout, border=border, shape=shape,
        ensemble_top=ensemble_top, command=command, by=by, native_size=native_size, tta=tta, backbone_ensemble=backbone_ensemble,
    )


@friendly_errors
def cv(
    config: Optional[Path] = ConfigOpt,
    data: Optional[Path] = DataOpt,
    manifest: Optional[Path] = ManifestOpt,
    model: Optional[str] = typer.Option(None, help="A head (`cxrdx list heads`) or a baseline (`cxrdx list baselines`). Default: model.head."),
    backbone: Optional[str] = typer.Option(None, help="Backbone whose cached features are used (default model.backbone)."),
    task: Optional[str] = TaskOpt,
    benchmark: Optional[str] = BenchmarkOpt,
    folds: Optional[int] = FoldsOpt,
    temperature: Optional[bool] = typer.Option(None, "--temperature/--no-temperature", help="Temperature scaling fitted on each fold's validation part."),
    target_sensitivity: Optional[float] = typer.Option(None, help="Covid operating point: sensitivity to reach on validation (default 0.95)."),
    image_level: Optional[bool] = ImageLevelOpt,
    blackout: bool = BlackoutOpt,
    border: bool = BorderOpt,
    shape: bool = ShapeOpt,
    by: str = ByOpt,
    out: Optional[Path] = _out_opt("cv"),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Patient-grouped, stratified k-fold cross-validation of one model on cached frozen features."""
    cfg = build_config(config, overrides, **{
        "data.root": data, "data.manifest": manifest, "model.backbone": backbone, "evaluation.folds": folds,
        "evaluation.temperature": temperature, "evaluation.target_sensitivity": target_sensitivity,
    })
    req = _request(cfg, models=[model or cfg.model.head], backbones=[cfg.model.backbone], task=task, benchmark=benchmark,
                   image_level=image_level, blackout=blackout, ensemble_top=0, command="cv", border=border, shape=shape, by=by)
    _run("cv", cfg, req, out)


@friendly_errors
def compare(
    config: Optional[Path] = ConfigOpt,
    data: Optional[Path] = DataOpt,
    manifest: Optional[Path] = ManifestOpt,
    heads: Optional[str] = typer.Option(None, help="Comma-separated heads from `cxrdx list heads` (default evaluation.heads)."),
    backbones: Optional[str] = typer.Option(None, help="Comma-separated backbones from `cxrdx list backbones` (default evaluation.backbones; those without weights are listed as skipped)."),
    baselines: Optional[str] = typer.Option(None, help="Comma-separated scikit-learn baselines on pooled features, from `cxrdx list baselines` ('' for none)."),
    task: Optional[str] = TaskOpt,
    benchmark: Optional[str] = BenchmarkOpt,
    folds: Optional[int] = FoldsOpt,
    ensemble_top: int = typer.Option(3, help="Add an ensemble (mean probabilities) of the top N models by validation macro-F1; 0 = none."),
    backbone_ensemble: bool = typer.Option(True, "--backbone-ensemble/--no-backbone-ensemble",
                                           help="With several backbones: add the ensemble of each backbone's best model (by validation)."),
    native_size: bool = typer.Option(False, "--native-size/--no-native-size",
                                     help="Feed each backbone at its own input size (Lite1 240, Lite2 260 px) instead of data.image_size."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Test-time augmentation: also score every model on the mean over the "
                             "image and its mirror (candidates <name>+tta; mirrored features extracted once)."),
    image_level: Optional[bool] = ImageLevelOpt,
    blackout: bool = BlackoutOpt,
    border: bool = BorderOpt,
    shape: bool = ShapeOpt,
    by: str = ByOpt,
    out: Optional[Path] = _out_opt("compare"),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Backbones x heads plus baselines through the same patient-grouped folds: one ranked table."""
    cfg = build_config(config, overrides, **{
        "data.root": data, "data.manifest": manifest, "evaluation.folds": folds, "evaluation.heads": heads,
        "evaluation.backbones": backbones, "evaluation.baselines": baselines,
    })
    ev = cfg.evaluation
    req = _request(cfg, models=_split(ev.heads) + _split(ev.baselines), backbones=_split(ev.backbones), task=task,
                   benchmark=benchmark, image_level=image_level, blackout=blackout, ensemble_top=ensemble_top, command="compare",
                   border=border, shape=shape, by=by, native_size=native_size, tta=tta, backbone_ensemble=backbone_ensemble)
    _run("compare", cfg, req, out)


@friendly_errors
def report(
    run_dir: Path = typer.Argument(..., help="Run folder from cxrdx cv / compare / train / demo."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default RUN_DIR/report.html; JSON beside it)."),
    bootstrap: int = typer.Option(1000, help="Patient-bootstrap resamples for CIs computed here (runs from train/demo)."),
) -> None:
    """Self-contained HTML report (and the same data as JSON): metrics with CIs, plots, comparison, benchmark, confounding."""
    from ..evaluation.report import write_report

    html_path, json_path, missing = write_report(run_dir, out, n_boot=bootstrap)
    console.print(f"wrote {html_path} and {json_path}")
    for note in missing:
        console.print(f"[dim]{note}[/]")


def register(app: typer.Typer) -> None:
    for fn in (cv, compare, report):
        app.command()(fn)
