"""``cxrdx list [KIND]``: what each registry holds (backbones, heads, CAM methods, ...)."""

from __future__ import annotations

from typing import Optional

import typer

from .common import console, friendly_errors


@friendly_errors
def list_names(
    kind: Optional[str] = typer.Argument(None, help="One registry (backbones, heads, runtimes, cam-methods, ...); none = all."),
) -> None:
    """List the names cxrdx accepts for backbones, heads, CAM methods, runtimes, benchmarks, baselines, series models, sources and tasks."""
    from rich.table import Table

    from ..registry import get_registry, kinds
    from ..tasks import TASKS

    table = Table(show_header=True, header_style="bold", box=None)
    for col in ("kind", "name", "description"):
        table.add_column(col)
    for k in [kind] if kind and kind != "tasks" else ([] if kind == "tasks" else kinds()):
        registry = get_registry(k)
        for name in registry.names():
            table.add_row(k, name, registry.describe(name))
    if kind in (None, "tasks"):
        for task in TASKS.values():
            table.add_row("tasks", task.name, task.description)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("list")(list_names)
