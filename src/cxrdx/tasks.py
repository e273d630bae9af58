"""The class vocabulary: every task cxrdx knows and its classes, in one place.

A *task* names what a model tells apart. ``3class`` and ``binary`` are the
training tasks; ``covid-vs-normal`` is the evaluation view used by the
DarkCovidNet binary benchmark (pneumonia rows dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

from .registry import UnknownNameError

COVID, PNEUMONIA, NORMAL, NON_COVID = "covid", "pneumonia", "normal", "non-covid"
LABELS = (COVID, PNEUMONIA, NORMAL)
"""Labels a manifest row may carry."""
LABEL_ALIASES: dict[str, str] = {"noncovid": NON_COVID, "non_covid": NON_COVID, "non covid": NON_COVID}
"""Spellings of the task vocabulary in other datasets (e.g. ct2's ``noncovid``): lower-cased key -> label."""
MODALITIES = ("xray", "ct")
"""Imaging modalities a model may be trained on (``model.json`` records one)."""


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    description: str

    def relabel(self, label: str) -> str | None:
        """A manifest label in this task's vocabulary; None when the task drops that label."""
        if NON_COVID in self.classes:
            return COVID if label == COVID else NON_COVID
        return label if label in self.classes else None


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("3class", (COVID, PNEUMONIA, NORMAL), "covid / pneumonia / normal"),
        Task("binary", (COVID, NON_COVID), "covid / non-covid (pneumonia and normal merged)"),
        Task("covid-vs-normal", (COVID, NORMAL), "covid / normal (pneumonia rows dropped)"),
    )
}
TRAINING_TASKS = ("3class", "binary")

CLASSES_3 = TASKS["3class"].classes
CLASSES_BINARY = TASKS["binary"].classes


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownNameError("tasks", name, list(TASKS)) from None


def task_classes(name: str) -> tuple[str, ...]:
    return get_task(name).classes


def classes_for(num_classes: int) -> tuple[str, ...]:
    """Default class names for a model with ``num_classes`` outputs (legacy checkpoints without names)."""
    if num_classes == 3:
        return CLASSES_3
    if num_classes == 2:
        return CLASSES_BINARY
    return tuple(f"class{i}" for i in range(num_classes))


def is_binary(classes: tuple[str, ...] | list[str]) -> bool:
    return len(tuple(classes)) == 2
