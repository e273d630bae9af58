"""The sources ``cxrdx data fetch`` knows: ``SOURCES = Registry("sources")``, one module per source.

Registration order matters: when two sources hold the same image, the row of
the source registered first is kept (darkcovidnet, so that its rows carry
``benchmark=darkcovidnet``). A new source is a module with a class that follows
:class:`cxrdx.data.fetch.base.Source`, registered here.
"""

from __future__ import annotations

from typing import Iterable

from ...registry import Registry, UnknownNameError
from .base import FetchError, Source
from .darkcovidnet import DarkCovidNet
from .ieee8023 import IEEE8023

SOURCES: Registry[Source] = Registry("sources", describe=lambda source: source.description)
for _source in (DarkCovidNet(), IEEE8023()):
    SOURCES.register(_source.name, _source)


class UnknownSourceError(FetchError, UnknownNameError):
    """A source name that :data:`SOURCES` does not hold, said in the words of the option that gave it.

    A :class:`FetchError` (the CLI prints one line, exit 2) and the registry's :class:`UnknownNameError`.
    """

    def __init__(self, message: str, name: str):
        self.kind, self.name, self.choices = SOURCES.kind, name, SOURCES.names()
        Exception.__init__(self, message)


def check_source(name: str, what: str, *, given: str | None = None) -> str:
    """``name`` if it is a registered source, else :class:`UnknownSourceError` naming the option ``what``
    and the name as the user ``given`` it."""
    if name not in SOURCES:
        shown = name if given is None else given
        raise UnknownSourceError(f"{what}: unknown source {shown!r}; known sources: {', '.join(SOURCES)}", name)
    return name


def parse_assignments(items: Iterable[str] | None, what: str = "--source-url") -> dict[str, str]:
    """``["NAME=VALUE", ...]`` -> ``{name: value}``, names checked against :data:`SOURCES`."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not value:
            raise FetchError(f"{what} expects NAME=VALUE (e.g. darkcovidnet=/tmp/COVID-19-master.zip), got {item!r}")
        out[check_source(name, what)] = value
    return out


def select(only: str | Iterable[str] | None) -> list[str]:
    """The sources to fetch, in registry order: all of them, or those named in ``only`` ("a,b" or a list)."""
    if only is None or only == "" or only == ():
        return SOURCES.names()
    names = [only] if isinstance(only, str) else list(only)
    names = [n.strip().lower() for part in names for n in str(part).split(",") if n.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise UnknownSourceError(f"unknown source {unknown[0]!r} for --only; choose from {', '.join(SOURCES)}",
                                 unknown[0])
    return [n for n in SOURCES if n in names]


def read_order(names: list[str]) -> list[str]:
    """``names`` with every source after the selected sources it reads (``Source.reads``)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ValueError(f"sources read each other: {sorted(visiting)}")
        visiting.add(name)
        for needed in SOURCES.get(name).reads:
            if needed in names:
                visit(needed)
        order.append(name)

    for name in names:
        visit(name)
    return order
