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

from ..data.manifest import load_manifest
from ..registry import Registry
from ..tasks import get_task, task_classes

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkTask", "get_benchmark", "task_classes", "task_manifest"]


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


BENCHMARKS: Registry[Benchmark] = Registry("benchmarks", describe=lambda b: b.citation)

BENCHMARKS.register("darkcovidnet", Benchmark(
    "darkcovidnet",
    "Ozturk T. et al., Automated detection of COVID-19 cases using deep neural networks with X-ray images, "
    "Comput. Biol. Med. 121:103792 (2020)",
    5,
    (
        BenchmarkTask("3class", task_classes("3class"), 0.8702,
                      "5-fold CV, image-level folds", "covid vs pneumonia vs no-finding (1,124 images)", 0.92, 0.95),
        BenchmarkTask("covid-vs-normal", task_classes("covid-vs-normal"), 0.9808,
                      "5-fold CV, image-level folds", "covid vs no-finding, pneumonia rows dropped (624 images)", 0.99),
    ),
))


def get_benchmark(name: str) -> Benchmark:
    """A registered benchmark; unknown names raise :class:`cxrdx.registry.UnknownNameError`."""
    return BENCHMARKS.get(name)


def task_manifest(root: str | Path, task: str, manifest: str | Path | None = None, benchmark: str | None = None) -> pd.DataFrame:
    """Rows of ``task`` (``covid-vs-normal`` drops every other label), optionally only a benchmark's rows."""
    return load_manifest(root, manifest, classes=get_task(task).classes, benchmark=benchmark)
