"""The speed layer with per-vehicle state in Beam keyed state (``speed.state: keyed``).

Shape::

    Create(PartitionStart per topic partition) | ParDo(ReadKafkaPartitions)    (as the fused shape)
      | ParDo(CheckAndKey)    per worker, fused with the source: parse, validate, prove, anchor;
                              dead letters to the worker's sinks; emits (vehicle, [decided events])
      | ParDo(ApplyKeyed)     stateful, keyed by vehicle: one VehicleSlot (fraud state, replay index,
                              ordering buffer) in a ReadModifyWriteState, and an event-time timer
      | ParDo(SinkOutcomes)   per worker: rows and dead letters into the sinks, flushed on time

Which worker reads which partition no longer matters: a vehicle's events meet
its state wherever the runner routes the key.  Release follows the same rule
as the fused shape's ordering buffer (:func:`speed.process.release`); the
watermark it is compared with is the runner's, proved by the timer firing at
(earliest held Kafka timestamp + ``order_hold_ms``).  Beam 2.77's local
runners do not carry an SDF's watermark downstream (FnApiRunner fires a
stage's event-time timers after every round of the source, Prism only when
the source ends; docs/speed.md), so there the watermark is this process's
read positions, less any event still in transit to its key; the timer only
wakes the key up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from speed.config import LOCAL_RUNNERS
from speed.metrics import METRICS
from speed.process import BatchResult, release
from speed.runtime import WorkerDoFn
from speed.source import KafkaRecord
from speed.state import VehicleSlot


class CheckAndKey(WorkerDoFn):
    """Per poll: the checks that need no vehicle state, then each vehicle's decided events."""

    def process(self, batch: list[KafkaRecord]) -> Iterator[Any]:
        METRICS.started_batch()
        with self._rt.lock:
            out = self._check(batch)
        for vehicle, events in out.items():
            yield TimestampedValue((vehicle, events), _timestamp(events))

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if not self._rt.processor.pending:
            return
        with self._rt.lock:  # events waiting for their checkpoint: retried at the end of each bundle
            out = self._check([])
        for vehicle, events in out.items():
            yield WindowedValue((vehicle, events), _timestamp(events), (GlobalWindow(),))

    def _check(self, batch: list[KafkaRecord]) -> dict[str, list[Any]]:
        rt = self._rt
        assert rt.in_flight is not None
        rt.in_flight.read(batch)
        ready, result = rt.processor.check_batch(batch, int(time.time() * 1000))
        rt.take(batch, result)
        rt.in_flight.done(d.record for d in result.dead)
        rt.in_flight.sent(ev.record.timestamp_ms for ev in ready)
        rt.flush(force=False)
        by_vehicle: dict[str, list[Any]] = {}
        for ev in ready:
            by_vehicle.setdefault(ev.env["vehicle"], []).append(ev)
        return by_vehicle


_NOTHING = -(2**63)  # a release limit below every Kafka timestamp


def _timestamp(events: list[Any]) -> Timestamp:
    return Timestamp.of(min(ev.record.timestamp_ms for ev in events) / 1000)


class ApplyKeyed(WorkerDoFn):
    """One vehicle's events against its keyed state, in the rules' order once the watermark allows."""

    SLOT = ReadModifyWriteStateSpec("vehicle", PickleCoder())
    WAKE = TimerSpec("release", TimeDomain.WATERMARK)

    def setup(self) -> None:
        super().setup()
        self._local = self._config.runner in LOCAL_RUNNERS
        self._hold = self._config.order_hold_ms

    def process(
        self,
        element: tuple[str, list[Any]],
        slot: Any = beam.DoFn.StateParam(SLOT),
        wake: Any = beam.DoFn.TimerParam(WAKE),
    ) -> Iterator[tuple[list[KafkaRecord], BatchResult]]:
        vehicle, events = element
        with self._rt.lock:
            state = slot.read()
            if state is None:  # the key's first event in this run: the state the restart rebuilt
                state = self._rt.slots.pop(vehicle, None) or VehicleSlot(self._config.dedupe_window_s * 1000)
            state.held.extend(events)
            assert self._rt.in_flight is not None
            self._rt.in_flight.arrived(ev.record.timestamp_ms for ev in events)
            out = self._release(state, slot, wake, None)
        if out is not None:
            yield out

    @on_timer(WAKE)
    def on_release(
        self,
        fired: Any = beam.DoFn.TimestampParam,
        slot: Any = beam.DoFn.StateParam(SLOT),
        wake: Any = beam.DoFn.TimerParam(WAKE),
    ) -> Iterator[tuple[list[KafkaRecord], BatchResult]]:
        with self._rt.lock:
            state = slot.read()
            out = None if state is None or not state.held else self._release(state, slot, wake, fired.micros // 1000)
        if out is not None:
            yield out

    def _limit(self, fired_ms: int | None) -> int | None:
        """The latest Kafka timestamp that may be released now; None: everything."""
        if self._hold is None or self._control.stopped.is_set():
            return None
        if not self._local:  # the runner's watermark: proved only by a timer firing
            return _NOTHING if fired_ms is None else fired_ms - self._hold
        assert self._rt.in_flight is not None
        watermark = self._control.watermark_ms()
        transit = self._rt.in_flight.earliest_in_transit()
        if transit is not None:
            watermark = min(watermark, transit - 1)
        return watermark - self._hold

    def _release(
        self, state: VehicleSlot, slot: Any, wake: Any, fired_ms: int | None
    ) -> tuple[list[KafkaRecord], BatchResult] | None:
        out, state.held = release(state.held, self._limit(fired_ms))
        result = BatchResult()
        if out:
            now_ms = int(time.time() * 1000)
            self._rt.processor.apply(out, now_ms, result, seen=state, vehicles=state)
            state.expire(now_ms)
            self._control.saw_records()  # work done downstream of the source is not idle time (--until-idle)
        slot.write(state)
        if state.held:
            earliest = min(ev.record.timestamp_ms for ev in state.held)
            wake.set(Timestamp.of((earliest + (self._hold or 0)) / 1000))
        return ([ev.record for ev in out], result) if out else None


class SinkOutcomes(WorkerDoFn):
    """Per worker: what the keys decided into the sinks; the sinks flushed on their interval."""

    def process(self, element: tuple[list[KafkaRecord], BatchResult]) -> Iterator[Any]:
        records, result = element
        with self._rt.lock:
            self._rt.take([], result)
            assert self._rt.in_flight is not None
            self._rt.in_flight.done(records)
            self._rt.flush(force=False)
        return iter(())

    def finish_bundle(self) -> None:
        with self._rt.lock:
            self._rt.flush(force=self._control.stopped.is_set(), final=self._control.stopped.is_set())
