"""One registry type for every named, pluggable thing in cxrdx.

Modelled on timm's ``_registry.py``: a module that owns a family of things
(backbones, heads, CAM methods, ...) creates one :class:`Registry` and fills it
with :meth:`Registry.register` (usable as a decorator); callers use
:meth:`Registry.get` and :meth:`Registry.names`. An unknown name always raises
the same :class:`UnknownNameError`, which the CLI prints as one line (exit 2).

Registries live in the layer that owns them. :func:`get_registry` finds one by
its kind (``"backbones"``, ``"heads"``, ...) without the caller importing that
layer, the way a plugin system finds entry points: ``load_config`` uses it to
check every name in a configuration before any data is read, and ``cxrdx list``
to show them.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

# kind -> module that creates (and fills) that registry at import time.
PROVIDERS: dict[str, str] = {
    "backbones": "cxrdx.models.backbones",
    "heads": "cxrdx.models.heads",
    "runtimes": "cxrdx.inference.runtimes",
    "cam-methods": "cxrdx.explain.methods",
    "series-models": "cxrdx.series.model",
    "benchmarks": "cxrdx.evaluation.benchmark",
    "baselines": "cxrdx.evaluation.baselines",
    "sources": "cxrdx.data.fetch.sources",
    "rois": "cxrdx.features.roi",
    "intensities": "cxrdx.features.roi",
    "fits": "cxrdx.features.roi",
    "samplings": "cxrdx.data.sampling",
    "augmentations": "cxrdx.data.transforms",
    "perturbations": "cxrdx.evaluation.stability",
}

_REGISTRIES: dict[str, "Registry"] = {}


class UnknownNameError(ValueError):
    """A name that its registry does not hold. ``str()`` is one line that lists the choices."""

    def __init__(self, kind: str, name: object, choices: list[str]):
        self.kind, self.name, self.choices = kind, name, choices
        singular = kind[:-3] + "y" if kind.endswith("ies") else kind[:-1] if kind.endswith("s") else kind
        super().__init__(f"unknown {singular} {name!r}; choose one of: {', '.join(choices)}")


class Registry(Generic[T]):
    """Named members of one kind, in registration order."""

    def __init__(self, kind: str, *, describe: Callable[[T], str] | None = None):
        if kind in _REGISTRIES:
            raise ValueError(f"a registry of {kind!r} exists already")
        self.kind = kind
        self._members: dict[str, T] = {}
        self._describe = describe
        _REGISTRIES[kind] = self

    def register(self, name: str, member: T | None = None):
        """``reg.register("x", obj)``, or ``@reg.register("x")`` on a class or function."""
        if member is not None:
            self._add(name, member)
            return member

        def decorator(obj: T) -> T:
            self._add(name, obj)
            return obj

        return decorator

    def _add(self, name: str, member: T) -> None:
        if name in self._members:
            raise ValueError(f"{self.kind}: {name!r} is registered twice")
        self._members[name] = member

    def get(self, name: str) -> T:
        try:
            return self._members[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self.names()) from None

    def check(self, name: str) -> str:
        """``name`` if registered, else :class:`UnknownNameError`."""
        self.get(name)
        return name

    def names(self) -> list[str]:
        return list(self._members)

    def describe(self, name: str) -> str:
        member = self.get(name)
        if self._describe is not None:
            return self._describe(member)
        doc = getattr(member, "__doc__", None) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._members.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def get_registry(kind: str) -> Registry:
    """The registry of ``kind``, importing the module that provides it on first use."""
    if kind not in _REGISTRIES:
        if kind not in PROVIDERS:
            raise UnknownNameError("registries", kind, list(PROVIDERS))
        importlib.import_module(PROVIDERS[kind])
    return _REGISTRIES[kind]


def kinds() -> list[str]:
    return list(PROVIDERS)
