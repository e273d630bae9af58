"""One progress-bar helper (rich) used by every long-running stage."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def set(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, info=text)


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[_Bar]:
    if not enabled:
        yield _Bar(None, None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        transient=not sys.stderr.isatty(), disable=not enabled,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")
        yield _Bar(progress, task)
