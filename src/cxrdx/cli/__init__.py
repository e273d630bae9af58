"""The ``cxrdx`` command line (Typer). Each stage registers its commands from its own module."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="cxrdx",
    help="COVID-19 / pneumonia / normal on chest X-rays: train, evaluate, explain and serve a hybrid CNN-RNN.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# one module per stage; each defines register(app)
COMMAND_MODULES = ("train", "explain", "serve", "data", "series", "evaluation", "listing", "dicom", "pacs", "lungs", "guard")

for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)


def main() -> None:
    app()
