"""What one speed-layer worker process keeps between bundles: the processor, the sinks, the alerts.

The DoFns of a run find their worker's :class:`Runtime` by the run's id
(:func:`runtime_for`); a worker process that has none (a remote runner's) builds
its own from the configuration.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import apache_beam as beam

from speed.alerts import AlertPublisher
from speed.config import SpeedConfig
from speed.errors import LedgerUnavailable
from speed.metrics import METRICS
from speed.process import BatchResult, EventProcessor
from speed.roots import RootSource
from speed.sinks import DeadLetterProducer, OffsetCommitter, Offsets, SinkWriter, read_master, recover
from speed.source import KafkaRecord, RunControl, control_for
from speed.state import InFlight, SeenEvents, VehicleSlot

RootsFactory = Callable[[], RootSource]


@dataclass
class Runtime:
    """One worker's processor (state), sinks and alerts, used by one bundle at a time."""

    processor: EventProcessor
    sinks: SinkWriter
    restored: int = 0
    alerts: AlertPublisher | None = None  # flags, wrecks and sales to the alerts topic
    #: keyed state (``speed.state: keyed``): the records between the source and the sinks, and
    #: the state restored from the master dataset that a vehicle's key takes on its first event
    in_flight: InFlight | None = None
    slots: dict[str, VehicleSlot] = field(default_factory=dict)
    #: one bundle at a time uses the processor and sinks: Prism and a multi-threaded FnApiRunner run
    #: several bundles of this worker at once (two flushes at once broke the commit manifest)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def floor(self) -> Offsets:
        """Per partition, the lowest offset the sinks must not commit past."""
        return self.processor.pending_floor() if self.in_flight is None else self.in_flight.floor()

    def take(self, records: list[KafkaRecord], result: BatchResult) -> None:
        """Outcomes into the sinks (``records``: the positions read) and flags to the alerts topic."""
        self.sinks.add(records, result)
        if self.alerts is not None:
            self.alerts.publish(result.rows)
        METRICS.observe(records, result, self.processor.pending)

    def flush(self, *, force: bool, final: bool = False) -> None:
        """Make the sinks durable when their interval is due (``force``: now)."""
        if not (force or self.sinks.due()):
            return
        try:
            if self.alerts is not None:  # the alerts of what the sinks commit are on the topic
                self.alerts.flush()
            written = self.sinks.flush(self.floor(), final=final)
        except LedgerUnavailable:  # the dead-letter topic is down: keep the buffer, retry
            METRICS.sink_retries.inc()
            return
        METRICS.flushed(written)

    def close(self) -> None:
        """The end of a run: the ordering buffer applied, everything flushed, clients closed."""
        try:
            if self.processor.held:  # the run ends: the ordering buffer is applied, not dropped
                self.take([], self.processor.process_batch([], int(time.time() * 1000)))
            if self.alerts is not None:
                self.alerts.flush()
            self.sinks.flush(self.floor(), final=True)
        finally:
            self.sinks.close()
            if self.alerts is not None:
                self.alerts.close()


_RUNTIMES: dict[str, Runtime] = {}


def build_runtime(config: SpeedConfig, roots: RootSource) -> Runtime:
    """Recover the sinks, rebuild state from the master dataset, open the dead-letter producer."""
    recover(config.state_dir, config.realtime_dir, config.master_dir, config.worker)
    processor = EventProcessor(config, roots)
    rows = read_master(config.master_dir)
    restored = processor.restore(rows)
    sinks = SinkWriter(
        config.realtime_dir,
        config.master_dir,
        config.state_dir,
        config.worker,
        config.flush_interval_ms,
        DeadLetterProducer(config.bootstrap, config.deadletter_topic),
        OffsetCommitter(config.bootstrap, config.consumer_group),
        master_flush_rows=config.master_flush_rows,
        master_flush_interval_s=config.master_flush_interval_s,
    )
    runtime = Runtime(processor, sinks, restored, alerts=AlertPublisher.for_config(config))
    if config.state == "keyed":
        runtime.in_flight = InFlight()
        runtime.slots = processor.slots(rows)
        processor.seen = SeenEvents(config.dedupe_window_s)  # the keys hold the replay index now
    settle_collector(config.gc_threshold)
    return runtime


def runtime_for(run_id: str, config: SpeedConfig, roots_factory: RootsFactory) -> Runtime:
    """The worker's runtime of this run (built here in a worker process that has none)."""
    runtime = _RUNTIMES.get(run_id)
    if runtime is None:  # a remote worker: build its own
        runtime = _RUNTIMES[run_id] = build_runtime(config, roots_factory())
    return runtime


def register(run_id: str, runtime: Runtime) -> None:
    _RUNTIMES[run_id] = runtime


def unregister(run_id: str) -> Runtime | None:
    return _RUNTIMES.pop(run_id, None)


class WorkerDoFn(beam.DoFn):
    """A DoFn of the run ``run_id`` that uses its worker's :class:`Runtime` and the run's stop conditions."""

    def __init__(self, config: SpeedConfig, roots_factory: RootsFactory, run_id: str) -> None:
        self._config = config
        self._roots_factory = roots_factory
        self._run_id = run_id

    def setup(self) -> None:
        self._rt: Runtime = runtime_for(self._run_id, self._config, self._roots_factory)
        self._control: RunControl = control_for(self._run_id)


def settle_collector(threshold: int | None) -> None:
    """Freeze what the worker holds now out of the cyclic collector and collect less often.

    Everything alive once the state is rebuilt (vehicle states, replay index,
    schemas, modules) moves to the permanent generation, which collections
    never scan; the first generation's threshold is raised to ``threshold``
    (``speed.gc_threshold``).  Per-event objects are freed by reference
    counting either way.  Process-wide, like the collector; None: untouched.
    """
    if threshold is None:
        return
    gc.collect()
    gc.freeze()
    first, second, third = gc.get_threshold()
    gc.set_threshold(max(first, threshold), second, third)
