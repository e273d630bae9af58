"""``cxrdx explain``: Grad-CAM overlays for images, or localisation scores against lung masks (``--score``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import ConfigOpt, DataOpt, SetOpt, build_config, console, err_console, friendly_errors


def _print_scores(scores: dict) -> None:
    from rich.table import Table

    def cell(stats: dict) -> str:
        if stats["mean"] is None:
            return "-"
        lo, hi = stats["ci"]
        return f"{stats['mean']:.2f} [{lo:.2f}, {hi:.2f}]"

    def chance(stats: dict) -> str:
        return "-" if stats.get("chance") is None else f"{stats['chance']:.2f}"

    level = round(100 * scores["ci_level"])
    table = Table(title=f"Where the model looks ({scores['method']} vs radiologist masks; mean [{level}% CI, patient bootstrap])")
    for col in ("group", "n", "lung energy", "peak in lungs", "lesion energy"):
        table.add_column(col, no_wrap=True)
    groups = [("overall", scores["overall"])] + list(scores["per_class"].items()) + [
        (f"source {k}", v) for k, v in scores["per_source"].items()
    ]
    for name, s in groups:
        table.add_row(name, str(s["n_images"]), cell(s["lung_energy"]), cell(s["pointing_game"]), cell(s["lesion_energy"]))
    o = scores["overall"]
    table.add_row("[dim]chance (uniform heat)[/]", "", chance(o["lung_energy"]), chance(o["pointing_game"]), chance(o["lesion_energy"]))
    console.print(table)
    if scores["flagged"]:
        console.print(f"[bold red]FLAGGED:[/] {scores['flag_reason']}")
    else:
        console.print(f"[green]not flagged[/]: mean lung energy >= {scores['flag_threshold']:.2f}")


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 2
    while stem in used:
        stem, n = f"{path.stem}_{n}", n + 1
    used.add(stem)
    return stem


@friendly_errors
def explain(
    images: Optional[list[Path]] = typer.Argument(None, help="Image files (PNG/JPEG/DICOM) or folders."),
    model_dir: Path = typer.Option(Path("runs/demo"), "--model", "--run", "-m", help="Run folder with model.safetensors + model.json."),
    method: Optional[str] = typer.Option(None, help="A CAM method from `cxrdx list cam-methods` (default: explain.method)."),
    target: Optional[str] = typer.Option(None, help="Explain this class instead of the predicted one."),
    score: bool = typer.Option(False, "--score", help="Score the heatmaps against the lung / lesion masks of --data."),
    data: Optional[Path] = DataOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default RUN_DIR/explain, images under RUN_DIR/explain/images)."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Grad-CAM heatmaps: an overlay PNG + raw heatmap .npy per image, or (--score) localisation scores with CIs."""
    from ..data.io import ImageReadError, ReadLimits, expand_paths
    from ..explain.cam import Explainer
    from ..explain.methods import CAM_METHODS
    from ..models.run import load_run
    from ..registry import UnknownNameError

    cfg = build_config(config, overrides, **{"data.root": data, "explain.method": method})
    method = cfg.explain.method
    try:
        CAM_METHODS.check(method)
    except UnknownNameError as exc:
        raise typer.BadParameter(str(exc), param_hint="--method") from None
    if score == bool(images):
        raise typer.BadParameter("give IMAGES to explain, or --score (not both)")
    limits = ReadLimits.from_config(cfg.data)
    model = load_run(model_dir)
    if target is not None and target not in model.classes:
        raise typer.BadParameter(f"unknown class {target!r}; the model knows {model.classes}", param_hint="--target")
    if score:
        from ..explain.scoring import SCORES_FILE, score_model

        out = out or model_dir / "explain"
        scores = score_model(model, cfg.data.resolved_root(), out, method=method, settings=cfg.explain,
                             run_dir=model_dir, limits=limits)
        _print_scores(scores)
        for f in scores["failures"]:
            err_console.print(f"[yellow]skipped[/] {f['error']}")
        console.print(f"wrote {out / SCORES_FILE} and {len(scores['gallery'])} gallery overlays in {out / 'gallery'} ({scores['seconds']:.0f} s)")
        return
    out = out or model_dir / "explain" / "images"
    used: set[str] = set()
    done, bad = [], 0
    explainer = Explainer(model, method, limits=limits, settings=cfg.explain)
    from ..inference.guard import check_image, load_screen

    screen = load_screen(model_dir, model)  # the run's input guard (None without one): refused images are skipped
    for path in expand_paths(images):
        try:
            check_image(screen, path, limits)
            exp = explainer(path, target)
        except ImageReadError as exc:
            err_console.print(f"[yellow]skipped[/] {exc}")
            bad += 1
            continue
        files = exp.save(out, _unique_stem(path, used))
        done.append({"source": str(path), **exp.to_dict()})
        console.print(f"{path}: predicted [bold]{exp.predicted}[/] {exp.probabilities[exp.predicted]:.1%}, "
                      f"{method} for {exp.target} -> {files['overlay']}")
    if done:
        (out / "explanations.json").write_text(json.dumps(done, indent=2))
    err_console.print(f"{len(done)} explained, {bad} skipped; output in {out}")
    if not done:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(explain)
