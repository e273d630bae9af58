"""``cxrdx series``: longitudinal model over each patient's exams, patient-level CV table with 95% CIs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import Config
from .common import ConfigOpt, DataOpt, ManifestOpt, SetOpt, build_config, console, err_console, friendly_errors


def _fmt(entry: dict | None, signed: bool = False) -> str:
    from ..evaluation.results import MetricWithCI

    return MetricWithCI.of(entry).text(digits=2, signed=signed)


def _print_report(report: dict) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    c = report["cohort"]
    names = list(c["label_counts"])
    console.print(
        f"[bold]cohort[/] patient_id prefix {c['patient_prefix']!r}: {c['patients']} patients, {c['exams']} exams; "
        f"exams per patient {c['exams_per_patient']}; [bold]{c['patients_2plus_exams']} patients with 2+ exams[/]; "
        f"{c['exams_without_offset_days']} exams without offset_days"
    )
    console.print(
        f"[bold]target[/] {report['target']} (positive = {report['positive_class']}): {c['labelled_patients']} labelled patients "
        f"({', '.join(f'{k} {v}' for k, v in c['label_counts'].items())}); with 2+ exams: {c['labelled_patients_2plus_exams']} "
        f"({', '.join(f'{k} {v}' for k, v in c['label_counts_2plus_exams'].items())})"
    )
    console.print(f"[bold]Patient-level CV, {report['target']}[/]: {report['protocol']}")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("patients", "model", "AUC [95% CI]", "bal. acc.", "AUC - last exam"):
        table.add_column(col, justify="left" if col in ("patients", "model") else "right", no_wrap=True)
    for group, label in (("all", "all"), ("2plus_exams", "2+ exams")):
        block = report["metrics"].get(group)
        if block is None:
            continue
        n = c["labelled_patients"] if group == "all" else c["labelled_patients_2plus_exams"]
        for model, m in block.items():
            table.add_row(f"{label} ({n})", model, _fmt(m["auc"]), _fmt(m["balanced_accuracy"]), _fmt(m.get("auc_minus_last_exam"), signed=True))
    Console(width=max(console.width, 110), soft_wrap=True).print(table)  # never squeeze the CIs
    site = c.get("site_overlap")
    if site:
        console.print(
            "[yellow]source check[/]: patients from a location (hospital/city) that has no patient of the other class: "
            + "; ".join(f"{names[int(k)]} {v['from_single_class_locations']}/{v['patients']}" for k, v in site.items())
            + " - part of any difference may be where the film was taken, not the disease."
        )
    console.print(f"[dim]{c['labelled_patients']} patients is very little data: CIs are wide; a difference whose CI spans 0 is not evidence.[/]")


@friendly_errors
def series(
    data: Optional[Path] = DataOpt,
    manifest: Optional[Path] = ManifestOpt,
    target: Optional[str] = typer.Option(None, help="survival (died vs survived) | diagnosis (covid vs other, at the last exam)."),
    folds: Optional[int] = typer.Option(None, help="Cross-validation folds over patients (default 5)."),
    rnn: Optional[str] = typer.Option(None, help="gru | lstm"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for series_<target>.json and per-patient predictions (default runs/series)."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Per patient, exams ordered by offset_days -> GRU/LSTM with time gaps, vs last-exam and mean-pool baselines."""
    from ..series.run import run_series

    cfg = build_config(config, overrides, **{
        "data.root": data, "data.manifest": manifest, "series.target": target, "series.folds": folds,
        "series.rnn": rnn, "out_dir": out,
    })
    if out is None and cfg.out_dir == Config().out_dir:
        cfg.out_dir = "runs/series"
    try:
        report, _ = run_series(cfg)
    except ValueError as exc:  # unknown target, empty cohort, too few patients per class
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    _print_report(report)
    console.print(f"wrote {Path(cfg.out_dir) / f'series_{cfg.series.target}.json'} ({report['seconds']:.0f} s)")


def register(app: typer.Typer) -> None:
    app.command()(series)
