"""Where things live: data, feature cache and server state (environment variables decide only places)."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_root() -> Path:
    """``$CXRDX_DATA`` if set, else ``../shared/data/cxr3`` next to the checkout."""
    env = os.environ.get("CXRDX_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data" / "cxr3"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data" / "cxr3"


def default_cache_dir() -> Path:
    """``$CXRDX_CACHE`` if set, else ``~/.cache/cxrdx``."""
    env = os.environ.get("CXRDX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "cxrdx"


def default_home_dir() -> Path:
    """Where the server keeps its state (audit database): ``$CXRDX_HOME`` or ``~/.local/share/cxrdx``."""
    env = os.environ.get("CXRDX_HOME")
    return Path(env) if env else Path.home() / ".local" / "share" / "cxrdx"
