"""Live events/s per stage of the demo's stream, and the demo's helpers for running work side by side.

:class:`StageMeter` turns cumulative counts per stage (events published by the producers, records on
Kafka, events read by the speed layer, dead letters) into events/s over the last seconds and since
the start. On a terminal the demo shows them in its rich progress bars; when the console is not a
terminal (a log file, CI) :class:`PlainProgress` prints one plain line every 10 s instead.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Clock = Callable[[], float]

#: The stages of the stream, in the order an event goes through them.
STAGES = ("producers", "Kafka", "speed layer")
PLAIN_EVERY_S = 10.0


class StageMeter:
    """Cumulative counts per stage → events/s over a sliding window and since the first count."""

    def __init__(self, clock: Clock = time.monotonic, window_s: float = 10.0) -> None:
        self.clock, self.window_s = clock, window_s
        self.start = clock()
        self.counts: dict[str, int] = {}
        self._history: dict[str, deque[tuple[float, int]]] = {}
        self.finished: dict[str, float] = {}  # stage -> seconds from the start when it was done

    def observe(self, counts: Mapping[str, int]) -> None:
        now = self.clock()
        for stage, count in counts.items():
            self.counts[stage] = count
            history = self._history.setdefault(stage, deque())
            history.append((now, count))
            while len(history) > 2 and now - history[1][0] >= self.window_s:
                history.popleft()

    def finish(self, stage: str) -> None:
        """``stage`` has nothing more to do: its average rate stops at this moment."""
        self.finished.setdefault(stage, self.clock() - self.start)

    def rate(self, stage: str) -> float:
        """Events/s of ``stage`` over the window (0 before two counts or once it is finished)."""
        history = self._history.get(stage)
        if stage in self.finished or not history or len(history) < 2:
            return 0.0
        (t0, c0), (t1, c1) = history[0], history[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def average(self, stage: str) -> float:
        """Events/s of ``stage`` from the start until it finished (or now)."""
        seconds = self.finished.get(stage, self.clock() - self.start)
        return self.counts.get(stage, 0) / seconds if seconds > 0 else 0.0

    def elapsed(self, stage: str | None = None) -> float:
        if stage is not None and stage in self.finished:
            return self.finished[stage]
        return self.clock() - self.start

    def describe(self, stage: str) -> str:
        count = self.counts.get(stage, 0)
        if stage in self.finished:
            return f"{stage} {count:,} (done in {self.finished[stage]:.0f} s, {self.average(stage):,.0f} events/s)"
        return f"{stage} {count:,} ({self.rate(stage):,.0f} events/s)"

    def line(self, extra: str = "") -> str:
        """One plain progress line: elapsed time, then each stage's count and rate."""
        parts = [self.describe(s) for s in STAGES if s in self.counts]
        parts += [self.describe(s) for s in self.counts if s not in STAGES]
        text = f"stream {self.elapsed():.0f} s: " + " · ".join(parts)
        return f"{text} · {extra}" if extra else text


class PlainProgress:
    """Prints the meter's line through ``say`` at most every ``every_s`` seconds (first one after ``every_s``)."""

    def __init__(self, say: Callable[[str], None], meter: StageMeter, every_s: float = PLAIN_EVERY_S) -> None:
        self.say, self.meter, self.every_s = say, meter, every_s
        self._next = meter.clock() + every_s

    def tick(self, extra: str = "") -> bool:
        now = self.meter.clock()
        if now < self._next:
            return False
        self._next = now + self.every_s
        self.say("  " + self.meter.line(extra))
        return True


class Background(Generic[T]):
    """``fn()`` in a daemon thread; :meth:`result` joins it and returns its value or raises its error."""

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self.seconds = 0.0

        def run() -> None:
            t0 = time.perf_counter()
            try:
                self._value = fn()
            except BaseException as exc:  # re-raised by result() in the caller's thread
                self._error = exc
            finally:
                self.seconds = time.perf_counter() - t0

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float | None = None) -> T:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self._thread.name} still running after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value
