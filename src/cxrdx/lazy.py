"""Lazy package exports: ``from cxrdx.models import create_model`` works, ``import cxrdx.models`` loads nothing.

A package ``__init__`` lists ``name -> submodule`` and calls :func:`lazy_exports`::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"create_model": "factory"})
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """Module-level ``__getattr__`` / ``__dir__`` / ``__all__`` that import ``exports[name]`` on first use."""

    def __getattr__(name: str) -> Any:
        submodule = exports.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{submodule}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__, sorted(exports)
