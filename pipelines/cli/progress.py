"""Progress of long commands where nobody watches a bar: one line every 10 s on a non-terminal.

A rich progress bar draws nothing useful into a file or a pipe, so a command whose
stderr is not a terminal prints instead, every ``every_s`` seconds::

    pcc produce: 12,345 done, 37,655 left of 50,000 (812/s), 15 s elapsed; cc-aurora (3 checkpoints)

:class:`LineProgress` offers the two methods the commands call on a rich
``Progress`` (``add_task`` and ``update``), so either can be passed.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


class LineProgress:
    """Counts work over several tasks and prints a line every ``every_s`` seconds (never a bar)."""

    def __init__(
        self, command: str, total: int | None = None, every_s: float = 10.0, stream: IO[str] | None = None
    ) -> None:
        self.command = command
        self.total = total  # None: the sum of the tasks' totals
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self._done: dict[str, int] = {}
        self._totals: dict[str, int | None] = {}
        self._current = ""
        self._t0 = time.monotonic()
        self._last = self._t0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.line()

    def add_task(self, description: str, total: int | None = None, **_: Any) -> str:
        task = description
        self._totals[task] = total
        self._done.setdefault(task, 0)
        self._current = description
        return task

    def update(
        self, task: str, completed: int | None = None, description: str | None = None, **_: Any
    ) -> None:
        if completed is not None:
            self._done[task] = completed
        if description is not None:
            self._current = description
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.line()

    def line(self) -> None:
        """Print the progress line now."""
        done = sum(self._done.values())
        total = self.total
        if total is None and self._totals and all(t is not None for t in self._totals.values()):
            total = sum(t or 0 for t in self._totals.values())
        elapsed = time.monotonic() - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f", {max(total - done, 0):,} left of {total:,}" if total is not None else ""
        current = f"; {self._current}" if self._current else ""
        print(
            f"{self.command}: {done:,} done{left} ({rate:,.0f}/s), {elapsed:,.0f} s elapsed{current}",
            file=self.stream,
            flush=True,
        )
