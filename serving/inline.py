"""Which paid queries the event loop answers itself instead of handing them to a worker thread.

Handing a query to a worker thread and its answer back to the event loop costs
two thread wake-ups, ~0.3 ms on a small machine: a twentieth of one vehicle's
history.  When the service is idle (no other query in flight) and the query's
shape has been fast, the loop runs it itself; nothing else could have used the
loop meanwhile except requests arriving during those few milliseconds.

What bounds the harm when a fast shape meets a slow value: the inline run is
given ``budget_s`` (20 ms by default), after which DuckDB is interrupted, the
query is run again by a worker as usual (nothing was charged: the receipt is
written only after a run completes) and the shape waits for fast runs again.
Nor does an inline run wait for the engine while new data is being loaded
(``ServingStore.pin(wait=False)``): it goes to a worker at once.

A shape is *(SQL template with its string literals taken out, format)*; it is
eligible after its last three answers each took at most ``fast_s`` (half the
budget by default).  Queries with a grant key (they may read the grant store)
or that the splitter does not template are never answered inline.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Hashable

from cachetools import LRUCache

from serving.engine.shapes import split_literals

#: answers a shape needs, each within ``fast_s``, before the loop answers it itself
RUNS_TO_QUALIFY = 3


class InlineGate:
    """Per-shape record of recent answer times; thread-safe (workers record, the loop asks)."""

    def __init__(self, budget_s: float, fast_s: float | None = None, size: int = 512) -> None:
        self.budget_s = budget_s
        self.fast_s = budget_s / 2 if fast_s is None else fast_s
        self.size = size
        #: shape -> its last answer times; the least recently answered beyond ``size`` dropped
        self._recent: LRUCache[Hashable, deque[float]] = LRUCache(maxsize=max(size, 1))
        self._lock = threading.Lock()
        #: answers given inline, and inline runs stopped at the budget and finished by a worker
        self.inline_answers = 0
        self.over_budget = 0

    @property
    def enabled(self) -> bool:
        return self.budget_s > 0

    @staticmethod
    def shape_of(sql: str, fmt: str, grant_key: str | None = None) -> Hashable | None:
        """The shape of an admitted query's body, or None if it is never answered inline."""
        if grant_key is not None:
            return None
        split = split_literals(sql)
        return None if split is None else (split[0], fmt)

    def eligible(self, shape: Hashable | None) -> bool:
        if shape is None or not self.enabled:
            return False
        with self._lock:
            recent = self._recent.get(shape)
            return recent is not None and len(recent) == RUNS_TO_QUALIFY and max(recent) <= self.fast_s

    def record(self, shape: Hashable | None, seconds: float) -> None:
        """One answer of ``shape`` took ``seconds`` (inline or in a worker)."""
        if shape is None or not self.enabled:
            return
        with self._lock:
            recent = self._recent.get(shape)
            if recent is None:
                recent = deque(maxlen=RUNS_TO_QUALIFY)
                if self.size > 0:
                    self._recent[shape] = recent
            recent.append(seconds)

    def stopped(self, shape: Hashable | None) -> None:
        """An inline run of ``shape`` passed the budget: it qualifies again only after fast runs."""
        with self._lock:
            self.over_budget += 1
            if shape is not None:
                self._recent.pop(shape, None)
