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

import heapq
import itertools
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol


class ReplayIndex(Protocol):
    """Event ids accepted recently and the Kafka record each came from."""

    def origin_of(self, event_id: str) -> int | None: ...

    def add(self, event_id: str, origin: int, now_ms: int | None = None) -> None: ...


class VehicleStore(Protocol):
    """Per-vehicle fraud state."""

    def get(self, vehicle: str) -> Any: ...

    def put(self, vehicle: str, state: Any) -> None: ...


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


class VehicleSlot:
    """One vehicle's whole speed-layer state, as Beam keyed state holds it (``speed.state: keyed``).

    The fraud state, the vehicle's replay index (event id -> origin and acceptance time; a
    replayed envelope carries the same vehicle, its leaf hash binds it) and the events held
    by the ordering buffer.  It serves as the :class:`ReplayIndex` and :class:`VehicleStore`
    the processor applies one vehicle's events with; pickled between bundles.
    """

    __slots__ = ("fraud", "held", "seen", "window_ms")

    def __init__(self, window_ms: int, fraud: Any = None, seen: dict[str, tuple[int, int]] | None = None) -> None:
        self.window_ms = window_ms
        self.fraud = fraud
        self.seen: dict[str, tuple[int, int]] = seen or {}
        self.held: list[Any] = []

    def origin_of(self, event_id: str) -> int | None:
        hit = self.seen.get(event_id)
        return None if hit is None else hit[0]

    def add(self, event_id: str, origin: int, now_ms: int | None = None) -> None:
        self.seen[event_id] = (origin, int(time.time() * 1000) if now_ms is None else now_ms)

    def get(self, vehicle: str) -> Any:
        return self.fraud

    def put(self, vehicle: str, state: Any) -> None:
        self.fraud = state

    def expire(self, now_ms: int) -> None:
        """Forget ids accepted more than the window ago (as :meth:`SeenEvents.expire`)."""
        horizon = now_ms - self.window_ms
        if any(at < horizon for _, at in self.seen.values()):
            self.seen = {k: v for k, v in self.seen.items() if v[1] >= horizon}

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.window_ms, self.fraud, self.seen, self.held)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.window_ms, self.fraud, self.seen, self.held = state



class InFlight:
    """Kafka records between the source and the sinks of one worker (``speed.state: keyed``).

    With keyed state an event's outcome reaches the sinks after a shuffle. The sinks may
    commit a partition's offset only below its lowest record still in flight (read, not yet
    in the sinks); the ordering buffer may count a partition as read only up to the earliest
    Kafka timestamp of an event still in transit to its vehicle's key.  Thread-safe.
    """

    __slots__ = ("_lock", "_open", "_transit", "_transit_heap")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[str, int], set[int]] = {}
        self._transit: dict[int, int] = {}  # Kafka timestamp -> events in transit with it
        self._transit_heap: list[int] = []

    def read(self, records: Iterable[Any]) -> None:
        with self._lock:
            for r in records:
                self._open.setdefault((r.topic, r.partition), set()).add(r.offset)

    def done(self, records: Iterable[Any]) -> None:
        with self._lock:
            for r in records:
                self._open.get((r.topic, r.partition), set()).discard(r.offset)

    def floor(self) -> dict[tuple[str, int], int]:
        """Per partition, the lowest offset still in flight."""
        with self._lock:
            return {k: min(v) for k, v in self._open.items() if v}

    def sent(self, timestamps: Iterable[int]) -> None:
        """Events handed to the shuffle, by Kafka timestamp."""
        with self._lock:
            for ts in timestamps:
                n = self._transit.get(ts, 0)
                if n == 0:
                    heapq.heappush(self._transit_heap, ts)
                self._transit[ts] = n + 1

    def arrived(self, timestamps: Iterable[int]) -> None:
        """Events held by their vehicle's key."""
        with self._lock:
            for ts in timestamps:
                n = self._transit.get(ts, 0) - 1
                if n > 0:
                    self._transit[ts] = n
                else:
                    self._transit.pop(ts, None)
            heap = self._transit_heap
            while heap and heap[0] not in self._transit:
                heapq.heappop(heap)

    def earliest_in_transit(self) -> int | None:
        with self._lock:
            return self._transit_heap[0] if self._transit_heap else None

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._open.values())
