"""One thread that enforces every query's time limit (instead of a timer thread per query)."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator


class Watchdog:
    """Calls a query's ``interrupt`` when its deadline passes, unless the query ended first.

    Deadlines sit in a heap watched by one daemon thread (started on first use);
    a query that ends removes its entry, so a late wake-up never interrupts it.
    The thread is woken only when a new deadline is earlier than the one it
    already sleeps until: with one time limit for every query that is almost
    never (each new deadline is later), so a query costs no thread switch.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, tuple[Callable[[], object], float | None]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        #: the monotonic time the thread sleeps until (inf: until notified)
        self._wake_at = float("inf")
        self.fired = 0

    @contextlib.contextmanager
    def limit(
        self, seconds: float, interrupt: Callable[[], object], repeat_s: float | None = None
    ) -> Iterator[None]:
        """Run the block under a time limit: past it, ``interrupt`` is called once, or with
        ``repeat_s`` again every ``repeat_s`` seconds until the block ends (DuckDB drops an
        interrupt that arrives while a statement is still being bound)."""
        key = next(self._ids)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pcc-query-watchdog", daemon=True)
                self._thread.start()
            deadline = time.monotonic() + seconds
            heapq.heappush(self._heap, (deadline, key))
            self._live[key] = (interrupt, repeat_s)
            if deadline < self._wake_at:
                self._wake_at = deadline  # the thread recomputes it when it wakes
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._live.pop(key, None)
                if not self._live:
                    self._heap.clear()
                elif len(self._heap) > 64 + 4 * len(self._live):
                    self._heap = [e for e in self._heap if e[1] in self._live]
                    heapq.heapify(self._heap)

    def pending(self) -> int:
        """Queries currently under a limit."""
        with self._cond:
            return len(self._live)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake_at = float("inf")
                    self._cond.wait()
                    continue
                self._wake_at = self._heap[0][0]
                wait = self._wake_at - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                _, key = heapq.heappop(self._heap)
                interrupt, repeat_s = self._live[key]
                if repeat_s is None:
                    del self._live[key]
                else:  # stays live until its block ends
                    heapq.heappush(self._heap, (time.monotonic() + repeat_s, key))
                self.fired += 1
            with contextlib.suppress(Exception):  # the cursor may have closed meanwhile
                interrupt()
