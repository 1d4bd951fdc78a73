"""Metrics of the speed layer: Prometheus counters and the progress line of ``pcc speed run``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry()


@dataclass
class Snapshot:
    events: int
    accepted: int
    verified: int
    dead_letters: int
    pending: int
    rows_flushed: int
    rate: float  # events/s since the previous snapshot
    lag: dict[str, int]  # "topic[p]" -> records behind the log end (last known)

    @property
    def verified_ratio(self) -> float:
        return self.verified / self.accepted if self.accepted else 0.0


class SpeedMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.events = Counter("pcc_speed_events", "Kafka records read", registry=registry)
        self.accepted = Counter("pcc_speed_accepted", "Events accepted", ["verification"], registry=registry)
        self.dead = Counter("pcc_speed_dead_letters", "Events dead-lettered", ["reason"], registry=registry)
        self.pending_gauge = Gauge("pcc_speed_pending", "Events waiting for a checkpoint", registry=registry)
        self.rows = Counter("pcc_speed_rows_flushed", "Rows made durable in the sinks", registry=registry)
        self.sink_retries = Counter(
            "pcc_speed_sink_retries", "Flushes postponed (transient)", registry=registry
        )
        self.lag_gauge = Gauge(
            "pcc_speed_lag", "Records behind the log end", ["partition"], registry=registry
        )
        self._lock = threading.Lock()
        self._counts = {"events": 0, "accepted": 0, "verified": 0, "dead": 0, "pending": 0, "rows": 0}
        self._positions: dict[str, int] = {}
        self._last = (time.monotonic(), 0)
        self.first_event_at: float | None = None  # monotonic time of the first record processed
        self.last_rows_at: float | None = None  # ... and of the last flush that wrote rows

    def reset(self) -> None:
        """Start the progress figures afresh (a new run in the same process)."""
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)
            self._positions = {}
            self._last = (time.monotonic(), 0)
            self.first_event_at = self.last_rows_at = None

    def set_partitions(self, starts: Iterable[Any]) -> None:
        for s in starts:
            self._positions[f"{s.topic}[{s.partition}]"] = s.offset

    def started_batch(self) -> None:
        if self.first_event_at is None:
            self.first_event_at = time.monotonic()

    def observe(self, batch: list[Any], result: Any, pending: int) -> None:
        with self._lock:
            c = self._counts
            c["events"] += len(batch)
            c["accepted"] += result.verified + result.unverified
            c["verified"] += result.verified
            c["dead"] += len(result.dead)
            c["pending"] = pending
            if batch:
                last = batch[-1]
                self._positions[f"{last.topic}[{last.partition}]"] = last.offset + 1
        self.events.inc(len(batch))
        if result.verified:
            self.accepted.labels("verified").inc(result.verified)
        if result.unverified:
            self.accepted.labels("unverified").inc(result.unverified)
        for d in result.dead:
            self.dead.labels(d.reason).inc()
        self.pending_gauge.set(pending)

    def flushed(self, rows: int) -> None:
        with self._lock:
            self._counts["rows"] += rows
            if rows:
                self.last_rows_at = time.monotonic()
        self.rows.inc(rows)

    def snapshot(self, log_ends: dict[str, int] | None = None) -> Snapshot:
        with self._lock:
            c = dict(self._counts)
            positions = dict(self._positions)
        now = time.monotonic()
        then, before = self._last
        self._last = (now, c["events"])
        lag = {k: max(0, log_ends[k] - v) for k, v in positions.items() if log_ends and k in log_ends}
        for k, v in lag.items():
            self.lag_gauge.labels(k).set(v)
        rate = (c["events"] - before) / (now - then) if now > then else 0.0
        return Snapshot(
            c["events"], c["accepted"], c["verified"], c["dead"], c["pending"], c["rows"], rate, lag
        )


METRICS = SpeedMetrics()


def serve(port: int) -> None:
    """Expose the metrics at ``http://127.0.0.1:<port>/metrics``."""
    start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
