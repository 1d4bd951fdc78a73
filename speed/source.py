"""A Kafka source for Beam that needs no Java: a splittable DoFn over topic partitions.

Each input element is one :class:`PartitionStart` (topic, partition, first
offset).  The restriction is an :class:`~apache_beam.io.restriction_trackers.OffsetRange`
of Kafka offsets from that first offset to "forever" (``sys.maxsize``); a
:class:`~apache_beam.io.watermark_estimators.ManualWatermarkEstimator` follows
the Kafka record timestamps.  One ``process`` call polls its partition once
(up to ``max_records`` records, batched), claims each offset, emits the whole
poll as **one** element (a list of :class:`KafkaRecord`) and defers the rest
of the range with ``tracker.defer_remainder()``.

Why a list per poll: the portable ``FnApiRunner`` costs tens of microseconds
per element; batching the poll keeps the per-event cost close to the plain
Python loop.  Why ``defer_remainder`` and a short sleep: on ``FnApiRunner``
(Beam 2.77) returning ``ProcessContinuation.resume()`` fails, and the runner
ignores resume delays, so an idle source would busy-poll a core.

Stop conditions live here because the local runner's ``run()`` blocks: a
shared :class:`RunControl` (``--until-idle``, ``--max-events``, SIGTERM).  When
it says stop, every partition claims past the end of its range (so the
tracker is done) and returns; the pipeline then drains and ``run()`` returns.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Timestamp

_FOREVER = sys.maxsize


class KafkaRecord(NamedTuple):
    """One Kafka record as the speed layer sees it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # the record's Kafka timestamp (produce time)
    key: bytes | None
    value: bytes

    @property
    def origin(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class PartitionStart(NamedTuple):
    """Where to start reading one partition (the sink's last durable offset)."""

    topic: str
    partition: int
    offset: int


@dataclass
class RunControl:
    """Stop conditions shared by every partition reader of one run (one process).

    ``until_idle_s``: stop when no partition returned a record for that long.
    ``max_events``: stop once that many records were claimed in total.
    :meth:`stop` (SIGTERM) stops as soon as the current polls return.
    """

    until_idle_s: float | None = None
    max_events: int | None = None
    claimed: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    stopped: threading.Event = field(default_factory=threading.Event)
    #: the partitions this process reads, and how far each has been read and processed
    #: (Kafka timestamp ms of its last record, or the time of a poll that found it caught up)
    partitions: set[tuple[str, int]] = field(default_factory=set)
    progress: dict[tuple[str, int], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def expect(self, partitions: Any) -> None:
        """Name the partitions to read: until each has reported, the watermark stays at the start."""
        with self._lock:
            self.partitions.update(partitions)

    def advanced(self, partition: tuple[str, int], position_ms: int) -> None:
        with self._lock:
            if position_ms > self.progress.get(partition, -1):
                self.progress[partition] = position_ms

    def watermark_ms(self) -> int:
        """Every partition read is past this Kafka timestamp (-1: one has not reported yet)."""
        with self._lock:
            if not self.progress:
                return -1
            return min(self.progress.get(p, -1) for p in self.partitions | self.progress.keys())

    def stop(self) -> None:
        self.stopped.set()

    def budget(self, wanted: int) -> int:
        """Reserve up to ``wanted`` records under ``max_events``; returns how many may be claimed."""
        with self._lock:
            if self.max_events is None:
                self.claimed += wanted
                return wanted
            grant = max(0, min(wanted, self.max_events - self.claimed))
            self.claimed += grant
            if self.claimed >= self.max_events:
                self.stopped.set()
            return grant

    def release(self, unused: int) -> None:
        with self._lock:
            self.claimed -= unused

    def saw_records(self) -> None:
        self.last_activity = time.monotonic()

    def should_stop(self) -> bool:
        if self.stopped.is_set():
            return True
        if self.until_idle_s is not None and time.monotonic() - self.last_activity >= self.until_idle_s:
            self.stopped.set()
            return True
        return False


# One process runs the local pipeline: the DoFns find their run's control by id.
_CONTROLS: dict[str, RunControl] = {}


def register_control(run_id: str, control: RunControl) -> None:
    _CONTROLS[run_id] = control


def control_for(run_id: str) -> RunControl:
    """The run's control; a fresh "run forever" one in a worker process that has none (remote runners)."""
    return _CONTROLS.setdefault(run_id, RunControl())


class _OffsetsProvider(RestrictionProvider):
    def initial_restriction(self, element: PartitionStart) -> OffsetRange:
        return OffsetRange(element.offset, _FOREVER)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: PartitionStart, restriction: OffsetRange) -> int:
        return 1  # unbounded: the size says nothing useful, keep the runner from splitting on it

    def split(self, element: PartitionStart, restriction: OffsetRange) -> Any:
        yield restriction  # a partition is read sequentially, never split up front


@dataclass(frozen=True)
class ConsumerOptions:
    bootstrap: str
    max_records: int = 5000
    poll_timeout_ms: int = 2
    idle_sleep_s: float = 0.003
    fetch_max_bytes: int = 16 * 1024 * 1024


class ReadKafkaPartitions(beam.DoFn):
    """The splittable DoFn: ``PartitionStart`` in, lists of :class:`KafkaRecord` out."""

    def __init__(self, options: ConsumerOptions, run_id: str) -> None:
        self._options = options
        self._run_id = run_id
        self._consumers: dict[tuple[str, int], Any] = {}

    def setup(self) -> None:
        self._consumers = {}
        self._control = control_for(self._run_id)
        if self._control.claimed == 0:
            self._control.saw_records()  # the idle clock starts when reading starts

    def _consumer(self, topic: str, partition: int, position: int) -> Any:
        from kafka import KafkaConsumer, TopicPartition

        key = (topic, partition)
        consumer = self._consumers.get(key)
        if consumer is None:
            consumer = KafkaConsumer(
                bootstrap_servers=self._options.bootstrap,
                enable_auto_commit=False,
                group_id=None,
                auto_offset_reset="earliest",
                max_poll_records=self._options.max_records,
                fetch_max_bytes=self._options.fetch_max_bytes,
                max_partition_fetch_bytes=self._options.fetch_max_bytes,
                fetch_max_wait_ms=20,  # the broker answers a fetch after at most this
            )
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, position)
            consumer._pcc_next = position
            self._consumers[key] = consumer
        elif consumer._pcc_next != position:  # the runner handed us another restriction
            tp = TopicPartition(topic, partition)
            consumer.seek(tp, position)
            consumer._pcc_next = position
        return consumer

    def process(
        self,
        element: PartitionStart,
        tracker: Any = beam.DoFn.RestrictionParam(_OffsetsProvider()),
        watermark: Any = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ) -> Any:
        control = self._control
        restriction = tracker.current_restriction()
        if control.should_stop():
            tracker.try_claim(restriction.stop)  # claim past the end: this partition is done
            return
        consumer = self._consumer(element.topic, element.partition, restriction.start)
        polled = consumer.poll(
            timeout_ms=self._options.poll_timeout_ms, max_records=self._options.max_records
        )
        records = [r for batch in polled.values() for r in batch]
        if records:
            grant = control.budget(len(records))
            out: list[KafkaRecord] = []
            for r in records[:grant]:
                if not tracker.try_claim(r.offset):
                    break
                out.append(KafkaRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value))
            control.release(grant - len(out))
            if out:
                control.saw_records()
                consumer._pcc_next = out[-1].offset + 1
                if len(out) < len(records):  # budget or restriction cut the poll short
                    from kafka import TopicPartition

                    consumer.seek(TopicPartition(element.topic, element.partition), consumer._pcc_next)
                watermark.set_watermark(Timestamp.of(out[-1].timestamp_ms / 1000.0))
                yield out
                control.saw_records()  # downstream work on the batch is not idle time
                # processed downstream (one fused stage): the ordering buffer may count it as read
                control.advanced((element.topic, element.partition), max(r.timestamp_ms for r in out))
        else:
            # caught up: what is produced from now on carries a later timestamp
            control.advanced((element.topic, element.partition), int(time.time() * 1000))
            time.sleep(self._options.idle_sleep_s)
        if control.should_stop():
            tracker.try_claim(restriction.stop)
            return
        tracker.defer_remainder()

    def teardown(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()
        self._consumers = {}
