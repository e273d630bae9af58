"""``cxrdx guard fit``: the input guard that tells chest X-ray / CT slice / neither (issue 13)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from .common import console, err_console, friendly_errors

guard_app = typer.Typer(help="Input guard: chest X-ray / CT slice / neither, from the backbone's features.", no_args_is_help=True)


@guard_app.command("fit")
@friendly_errors
def fit(
    models: list[Path] = typer.Option(..., "--model", "-m", help="Run folder(s) to give the guard (same backbone); repeatable."),
    xray: Path = typer.Option(Path("../shared/data/cxr3"), "--xray", help="Chest X-ray dataset (manifest folder)."),
    ct: Optional[Path] = typer.Option(Path("../shared/data/ct2"), "--ct", help="CT-slice dataset (manifest folder); '' for none."),
    false_refusal: float = typer.Option(0.005, help="Wanted share of a source's real images refused: each threshold is the worst source's "
                                        "(1 - this) quantile of out-of-fold distances."),
    method: str = typer.Option("knn", help="knn (cosine distance to the 10th nearest reference image) | mahalanobis (one Gaussian)."),
    noise: int = typer.Option(100, help="Synthetic noise images to check refusal on."),
    seed: int = typer.Option(42, help="Patient split seed (the same as `cxrdx train`'s data.split_seed)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the check to this JSON (default: guard_report.json in each run)."),
) -> None:
    """Fit each modality's distance on train + validation patients (thresholds from patient-grouped out-of-fold
    distances, worst source); check on test patients,
    scikit-image's pictures and noise. Writes guard.json + guard.safetensors (+ guard_report.json) into each run."""
    from ..data.manifest import load_manifest
    from ..inference.guard import GUARD_INFO, GuardError
    from ..inference.guard_fit import evaluate_guard, fit_guard, modality_rows, ood_features
    from ..models.run import load_run
    from ..config import default_cache_dir
    from ..tasks import CLASSES_3, CLASSES_BINARY

    t0 = time.perf_counter()
    model = load_run(models[0])
    runs = [(m, load_run(m).info) for m in models[1:]]
    datasets = {"xray": (xray, CLASSES_3)}
    if ct is not None and str(ct):
        datasets["ct"] = (ct, CLASSES_BINARY)
    parts = {}
    for modality, (root, classes) in datasets.items():
        df = load_manifest(root, classes=classes)
        parts[modality] = modality_rows(model, df, default_cache_dir(), seed=seed, progress=True)
    try:
        guard = fit_guard(model, parts, false_refusal=false_refusal, method=method)
        for run_dir, info in runs:
            guard.check_compatible(info)
    except GuardError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    ood, _ = ood_features(model, noise=noise)
    result = evaluate_guard(guard, parts, ood)
    result["false_refusal_target"] = false_refusal
    result["thresholds"] = guard.thresholds
    for run_dir in models:
        guard.save(run_dir)
        (run_dir / "guard_report.json").write_text(json.dumps(result, indent=2))
    if report:
        report.write_text(json.dumps(result, indent=2))
    _print(result)
    console.print(f"wrote {GUARD_INFO} + guard.safetensors into {', '.join(map(str, models))} ({time.perf_counter() - t0:.0f} s)")


def _pct(r: dict) -> str:
    if r["rate"] is None:
        return "n/a"
    lo, hi = r["ci95"]
    return f"{r['rate']:.1%} ({r['count']}/{r['n']}; 95% CI {lo:.1%}-{hi:.1%})"


def _print(result: dict) -> None:
    for m, e in result["held_out"].items():
        console.print(f"held-out {m}: routed correctly {_pct(e['routed_correctly'])}, refused {_pct(e['refused'])}, "
                      f"to the other modality {_pct(e['routed_to_other_modality'])}")
        for src, r in e.get("refused_per_source", {}).items():
            console.print(f"    {src}: refused {_pct(r)}")
    for g, e in result["out_of_distribution"].items():
        console.print(f"{g}: refused {_pct(e['refused'])}; accepted as {e['accepted_as']}")


def register(app: typer.Typer) -> None:
    app.add_typer(guard_app, name="guard")
