"""Shared CLI plumbing: config building from options, friendly errors."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from ..config import Config, ConfigError, load_config

LOG_WIDTH = 200
"""Console width where output goes to a file or pipe and $COLUMNS is unset (rich would assume 80 and squeeze the
result tables' columns to a few letters)."""


def _width(stream) -> int | None:
    return None if stream.isatty() or os.environ.get("COLUMNS") else LOG_WIDTH


console = Console(soft_wrap=True, width=_width(sys.stdout))
err_console = Console(stderr=True, soft_wrap=True, width=_width(sys.stderr))


def friendly_errors(fn: Callable) -> Callable:
    """Known user errors become one red line and exit code 2, not a traceback."""
    from ..data.io import ImageReadError
    from ..data.manifest import ManifestError
    from ..data.splits import LeakageError
    from ..models.run import RunError
    from ..models.weights import WeightsUnavailableError
    from ..registry import UnknownNameError
    from ..stats.metrics import MetricsError

    known = (ConfigError, ManifestError, LeakageError, WeightsUnavailableError, RunError,
             UnknownNameError, ImageReadError, FileNotFoundError, MetricsError)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except known as exc:
            err_console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None

    return wrapper


def registered(kind: str) -> str:
    """Help text for an option whose value is a registry name (the names come from the registry, not from here)."""
    return f"A name from `cxrdx list {kind}`."


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (see configs/).")
SetOpt = typer.Option(None, "--set", "-s", help="Override any setting: section.key=value (repeatable).")
DataOpt = typer.Option(None, "--data", help="Dataset folder (CSV manifest or folder-per-class). Default: $CXRDX_DATA or ../shared/data/cxr3.")
ManifestOpt = typer.Option(None, "--manifest", help="CSV manifest with image,label,patient_id columns.")


def build_config(
    config: Optional[Path],
    overrides: Optional[list[str]],
    **options,
) -> Config:
    """Defaults <- YAML file <- named CLI options <- ``--set`` overrides."""
    named = [f"{k}={v}" for k, v in options.items() if v is not None]
    return load_config(config, named + list(overrides or []))
