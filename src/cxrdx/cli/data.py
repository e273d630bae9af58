"""``cxrdx data fetch``: download the public sources and lay them out like cxr3."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import console, err_console, friendly_errors

data_app = typer.Typer(
    name="data",
    help="Datasets: download the public sources (DarkCovidNet, ieee8023) as a cxr3-style folder.",
    no_args_is_help=True,
)


@data_app.command("fetch")
@friendly_errors
def fetch(
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to write: images/<label>/*.png + metadata.csv."),
    only: Optional[str] = typer.Option(None, "--only", help="Fetch one source only (`cxrdx list sources`)."),
    source_url: Optional[list[str]] = typer.Option(
        None, "--source-url",
        help="NAME=URL_OR_PATH: another URL, a file:// URL, a local zip or an extracted folder for a source (repeatable).",
    ),
    sha256: Optional[list[str]] = typer.Option(None, "--sha256", help="NAME=HEX: expected SHA-256 of a source's archive (repeatable)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Where downloads are kept (default OUT/.cache)."),
    timeout: float = typer.Option(30.0, "--timeout", help="Network timeout in seconds (connect and each read)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Image conversion threads (default: CPUs, at most 8)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild OUT even if it already holds a metadata.csv."),
    refresh: bool = typer.Option(False, "--refresh", help="Download again even if the cache holds the archive."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Download DarkCovidNet + ieee8023, keep frontal X-rays, write 256-px greyscale PNGs and metadata.csv."""
    from ..data.fetch import FetchError, fetch as run_fetch, parse_assignments

    try:
        result = run_fetch(
            out,
            only=only,
            source_urls=parse_assignments(source_url, "--source-url"),
            sha256=parse_assignments(sha256, "--sha256"),
            cache_dir=cache,
            timeout=timeout,
            workers=workers,
            overwrite=overwrite,
            refresh=refresh,
            progress=progress,
            echo=lambda msg: err_console.print(escape(msg)),
        )
    except FetchError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except OSError as exc:  # disk full, permissions ... on the output or cache folder
        err_console.print(f"[bold red]error:[/] cannot write the dataset: {escape(str(exc))}")
        raise typer.Exit(2) from None

    table = Table(title=f"{result.manifest}")
    table.add_column("label")
    for name in result.per_source:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right")
    # per label x source, from the written rows
    import csv

    with open(result.manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for label, total in result.counts.items():
        cells = [str(sum(1 for r in rows if r["label"] == label and r["source"] == s)) for s in result.per_source]
        table.add_row(label, *cells, str(total))
    table.add_row("[bold]all[/]", *[str(n) for n in result.per_source.values()], f"[bold]{result.total}[/]")
    console.print(table)
    if result.duplicates:
        console.print(f"{result.duplicates} image(s) found in both sources kept once (benchmark=darkcovidnet).")
    for reason, n in sorted(result.excluded.items()):
        console.print(f"left out: {n} x {escape(reason)}")
    for s in result.skipped:
        err_console.print(f"[yellow]skipped[/] {escape(s.source)}: {escape(s.file)}: {escape(s.reason)}")
    if result.skipped:
        err_console.print(f"[yellow]{len(result.skipped)} file(s) skipped[/] (listed in {result.out_dir / 'fetch_report.json'})")
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(w)}")
    console.print(f"wrote {result.total} images to [bold]{escape(str(result.out_dir))}[/] "
                  f"(sources: {', '.join(result.per_source)}); "
                  f"train on it with: cxrdx train --data {escape(str(result.out_dir))}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
