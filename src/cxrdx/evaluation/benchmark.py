"""Benchmark protocols: which rows, which classes, and the published numbers to put beside ours.

DarkCovidNet (Ozturk et al., Comput. Biol. Med. 2020, doi:10.1016/j.compbiomed.2020.103792):
1,124 images (124 covid, 500 no-finding, 500 pneumonia), 5-fold cross-validation
with folds drawn over **images** (patients may sit in train and test).
Binary = covid vs no-finding (pneumonia rows dropped); 3-class = all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..data.manifest import ManifestError, load_manifest


@dataclass(frozen=True)
class BenchmarkTask:
    name: str
    classes: tuple[str, ...]
    published_accuracy: float
    published_protocol: str
    description: str
    target_accuracy: float | None = None
    """cxrdx's goal for the patient-level number (issue 3)."""
    target_covid_sensitivity: float | None = None


@dataclass(frozen=True)
class Benchmark:
    name: str
    citation: str
    folds: int
    tasks: tuple[BenchmarkTask, ...]


BENCHMARKS = {
    "darkcovidnet": Benchmark(
        "darkcovidnet",
        "Ozturk T. et al., Automated detection of COVID-19 cases using deep neural networks with X-ray images, "
        "Comput. Biol. Med. 121:103792 (2020)",
        5,
        (
            BenchmarkTask("3class", ("covid", "pneumonia", "normal"), 0.8702,
                          "5-fold CV, image-level folds", "covid vs pneumonia vs no-finding (1,124 images)", 0.92, 0.95),
            BenchmarkTask("covid-vs-normal", ("covid", "normal"), 0.9808,
                          "5-fold CV, image-level folds", "covid vs no-finding, pneumonia rows dropped (624 images)", 0.99),
        ),
    ),
}


class UnknownBenchmarkError(ManifestError):
    pass


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UnknownBenchmarkError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}") from None


def task_classes(task: str) -> tuple[str, ...]:
    """Classes of a task name: ``3class``, ``binary`` (covid vs non-covid) or ``covid-vs-normal``."""
    return {"3class": ("covid", "pneumonia", "normal"), "binary": ("covid", "non-covid"),
            "covid-vs-normal": ("covid", "normal")}[task]


def task_manifest(root: str | Path, task: str, manifest: str | Path | None = None, benchmark: str | None = None) -> pd.DataFrame:
    """Rows of ``task`` (``covid-vs-normal`` drops every other label), optionally only a benchmark's rows."""
    if task not in ("3class", "binary", "covid-vs-normal"):
        raise UnknownBenchmarkError(f"unknown task {task!r}; choose 3class, binary or covid-vs-normal")
    return load_manifest(root, manifest, classes=task_classes(task), benchmark=benchmark)
