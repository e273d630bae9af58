"""One progress helper used by every long-running stage: a rich bar on a terminal, plain lines in a log.

Where stderr is not a terminal (a batch job, ``nohup``, CI, a remote machine's log), a rich bar would print
nothing until the stage ends; there the stage writes one plain line at most every
:data:`LINE_INTERVAL_S` seconds, and a last line when it ends, if it ran that long.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LINE_INTERVAL_S = 30.0


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def set(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, info=text)


class _LineBar(_Bar):
    """Progress as plain lines on stderr, rate-limited (for logs)."""

    def __init__(self, total: int, description: str, interval: float | None = None):
        super().__init__(None, None)
        self.total, self.description = total, description
        self.interval = LINE_INTERVAL_S if interval is None else interval
        self.done, self.info = 0, ""
        self.start = self.last = time.monotonic()

    def _line(self, now: float) -> None:
        info = f" {self.info}" if self.info else ""
        print(f"{self.description}: {self.done}/{self.total}{info} ({now - self.start:.0f} s)", file=sys.stderr, flush=True)
        self.last = now

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self._line(now)

    def set(self, text: str) -> None:
        self.info = text

    def close(self) -> None:
        now = time.monotonic()
        if now - self.start >= self.interval and self.last < now:
            self._line(now)


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[_Bar]:
    if not enabled:
        yield _Bar(None, None)
        return
    if not sys.stderr.isatty():
        bar = _LineBar(total, description)
        try:
            yield bar
        finally:
            bar.close()
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
    )
    with progress:
        task = progress.add_task(description, total=total, info="")
        yield _Bar(progress, task)
