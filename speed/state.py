"""Keyed state of the speed layer, kept compact.

* :class:`VehicleStates`: vehicle pseudonym -> the compact fraud state of
  :mod:`pipelines.rules.fraud` (opaque here).  Keys are stored as 16 raw
  bytes instead of the 34-character pseudonym.
* :class:`SeenEvents`: event ids accepted recently, with the Kafka record each
  came from, so that a *redelivery* of the same record (after a crash) is
  skipped silently while a *replay* (the same event id in another record) is
  dead-lettered as ``duplicate_event``.  Bounded by a time window (UUIDv7 ids
  carry their creation time) and by a maximum count; older replays are the
  batch layer's job (the master dataset is unique by event id).

Both are rebuilt on start from the master dataset (see :mod:`speed.sinks`),
so they never need their own durable copy.
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections import deque
from typing import Any


def vehicle_key(pseudonym: str) -> bytes:
    """``v-`` + 32 hex -> 16 bytes (anything else is kept as its UTF-8 bytes)."""
    try:
        return bytes.fromhex(pseudonym[2:]) if len(pseudonym) == 34 else pseudonym.encode()
    except ValueError:
        return pseudonym.encode()


class VehicleStates:
    """Per-vehicle fraud state; values are whatever the fraud rules keep."""

    __slots__ = ("_states",)

    def __init__(self) -> None:
        self._states: dict[bytes, Any] = {}

    def get(self, vehicle: str) -> Any:
        return self._states.get(vehicle_key(vehicle))

    def put(self, vehicle: str, state: Any) -> None:
        self._states[vehicle_key(vehicle)] = state

    def __len__(self) -> int:
        return len(self._states)


def origin_key(topic: str, partition: int, offset: int) -> int:
    """A compact integer naming one Kafka record (stable across processes)."""
    return (zlib.crc32(topic.encode()) << 96) | (partition << 64) | offset


def uuid7_ms(event_id: str) -> int:
    return int(event_id[:8] + event_id[9:13], 16)


class SeenEvents:
    """Event id -> origin key of the record that brought it, bounded.

    Ids are forgotten ``window_s`` after they were *accepted* (processing
    time), never by the time inside the UUIDv7: a backlog of two-year-old
    events must still catch a replay that arrives seconds after its original.
    Acceptance times are kept as per-minute counts over the dict's insertion
    order, so the index costs no more per id than before.
    """

    __slots__ = ("_buckets", "_max_entries", "_seen", "_window_ms")

    def __init__(self, window_s: float, max_entries: int = 5_000_000) -> None:
        self._window_ms = int(window_s * 1000)
        self._max_entries = max_entries
        self._seen: dict[bytes, int] = {}
        self._buckets: deque[list[int]] = deque()  # [minute_ms, ids first added in that minute]

    @staticmethod
    def _key(event_id: str) -> bytes:
        return bytes.fromhex(event_id.replace("-", ""))

    def origin_of(self, event_id: str) -> int | None:
        return self._seen.get(self._key(event_id))

    def add(self, event_id: str, origin: int, now_ms: int | None = None) -> None:
        key = self._key(event_id)
        if key not in self._seen:
            minute = (int(time.time() * 1000) if now_ms is None else now_ms) // 60_000 * 60_000
            if self._buckets and self._buckets[-1][0] >= minute:
                self._buckets[-1][1] += 1
            else:
                self._buckets.append([minute, 1])
        self._seen[key] = origin
        if len(self._seen) > self._max_entries:
            self._evict_count(len(self._seen) - self._max_entries)

    def expire(self, now_ms: int) -> int:
        """Forget ids accepted before the window; returns how many were dropped."""
        horizon = now_ms - self._window_ms
        n = 0
        while self._buckets and self._buckets[0][0] + 60_000 <= horizon:
            n += self._buckets.popleft()[1]
        n = min(n, len(self._seen))
        for key in list(itertools.islice(self._seen, n)):
            del self._seen[key]
        return n

    def _evict_count(self, n: int) -> None:
        for key in list(itertools.islice(self._seen, n)):
            del self._seen[key]
        while n > 0 and self._buckets:  # the oldest ids went first: shrink the oldest buckets
            take = min(n, self._buckets[0][1])
            self._buckets[0][1] -= take
            n -= take
            if self._buckets[0][1] == 0:
                self._buckets.popleft()

    def __len__(self) -> int:
        return len(self._seen)
