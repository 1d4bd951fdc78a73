"""The speed layer's Beam pipeline: Kafka -> verify, score, flag -> real-time view, master dataset, dead letters.

Shape (everything after ``Create`` fuses into one stage, so nothing waits
for a shuffle and the local runner streams)::

    Create(PartitionStart per topic partition, from the sinks' durable offsets)
      | ParDo(ReadKafkaPartitions)     splittable DoFn, one list of records per poll
      | ParDo(ProcessAndSink)          EventProcessor + SinkWriter (transactional flush)

Locally it runs on Beam's portable ``FnApiRunner``, chosen explicitly (never
the default ``DirectRunner``).  ``--runner`` and any Beam option are passed
through (``pipeline_args``): see docs/speed.md for Flink and Dataflow.
"""

from __future__ import annotations

import gc
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from speed.alerts import AlertPublisher
from speed.config import SpeedConfig
from speed.errors import LedgerUnavailable, SpeedError
from speed.metrics import METRICS
from speed.process import EventProcessor
from speed.roots import RootSource
from speed.sinks import (
    DeadLetterProducer,
    OffsetCommitter,
    Offsets,
    SinkWriter,
    read_master,
    recover,
)
from speed.source import (
    ConsumerOptions,
    KafkaRecord,
    PartitionStart,
    ReadKafkaPartitions,
    RunControl,
    control_for,
    register_control,
)

RootsFactory = Callable[[], RootSource]


def partition_starts(config: SpeedConfig, durable: Offsets) -> list[PartitionStart]:
    """One start per partition of every event topic: the durable offset, or the beginning."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=config.bootstrap, enable_auto_commit=False)
    try:
        starts: list[PartitionStart] = []
        for topic in config.topics:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise SpeedError(f"topic {topic} does not exist on {config.bootstrap} (run 'pcc kafka up')")
            for p in sorted(partitions):
                starts.append(PartitionStart(topic, p, durable.get((topic, p), 0)))
        return starts
    finally:
        consumer.close()


@dataclass
class Runtime:
    """What one worker keeps between bundles: the processor (state) and the sinks."""

    processor: EventProcessor
    sinks: SinkWriter
    restored: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    alerts: AlertPublisher | None = None  # flags, wrecks and sales to the alerts topic
    #: one bundle at a time uses the processor and sinks: Prism and a multi-threaded FnApiRunner run
    #: several bundles of this worker at once (two flushes at once broke the commit manifest)
    lock: threading.Lock = field(default_factory=threading.Lock)


_RUNTIMES: dict[str, Runtime] = {}


def build_runtime(config: SpeedConfig, roots: RootSource) -> Runtime:
    """Recover the sinks, rebuild state from the master dataset, open the dead-letter producer."""
    recover(config.state_dir, config.realtime_dir, config.master_dir, config.worker)
    processor = EventProcessor(config, roots)
    restored = processor.restore(read_master(config.master_dir))
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
    settle_collector(config.gc_threshold)
    return Runtime(processor, sinks, restored, alerts=AlertPublisher.for_config(config))


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


class ProcessAndSink(beam.DoFn):
    """Runs the per-event logic on each polled batch and flushes the sinks on time."""

    def __init__(self, config: SpeedConfig, roots_factory: RootsFactory, run_id: str) -> None:
        self._config = config
        self._roots_factory = roots_factory
        self._run_id = run_id

    def setup(self) -> None:
        runtime = _RUNTIMES.get(self._run_id)
        if runtime is None:  # a remote worker: build its own
            runtime = _RUNTIMES[self._run_id] = build_runtime(self._config, self._roots_factory())
        self._rt = runtime
        self._control = control_for(self._run_id)

    def process(self, batch: list[KafkaRecord]) -> Any:
        with self._rt.lock:
            self._process(batch)
        return ()

    def _watermark(self) -> int | None:
        """How far every partition has been read (ordering buffer); None once stopping: apply all."""
        if self._config.order_hold_ms is None or self._control.stopped.is_set():
            return None
        return self._control.watermark_ms()

    def _process(self, batch: list[KafkaRecord]) -> None:
        METRICS.started_batch()
        now_ms = int(time.time() * 1000)
        result = self._rt.processor.process_batch(batch, now_ms, self._watermark())
        self._rt.sinks.add(batch, result)
        if self._rt.alerts is not None:
            self._rt.alerts.publish(result.rows)
        METRICS.observe(batch, result, self._rt.processor.pending)
        self._maybe_flush(force=False)

    def finish_bundle(self) -> None:
        with self._rt.lock:
            self._finish_bundle()

    def _finish_bundle(self) -> None:
        if self._rt.processor.pending or self._rt.processor.held:
            result = self._rt.processor.process_batch([], int(time.time() * 1000), self._watermark())
            self._rt.sinks.add([], result)
            if self._rt.alerts is not None:
                self._rt.alerts.publish(result.rows)
            METRICS.observe([], result, self._rt.processor.pending)
        self._maybe_flush(force=self._control.stopped.is_set())

    def _maybe_flush(self, force: bool) -> None:
        sinks = self._rt.sinks
        if force or sinks.due():
            try:
                if self._rt.alerts is not None:  # the alerts of what the sinks commit are on the topic
                    self._rt.alerts.flush()
                written = sinks.flush(self._rt.processor.pending_floor(), final=force)
            except LedgerUnavailable:  # the dead-letter topic is down: keep the buffer, retry
                METRICS.sink_retries.inc()
                return
            METRICS.flushed(written)


@dataclass
class SpeedRun:
    """One run of the speed layer in this process."""

    config: SpeedConfig
    roots_factory: RootsFactory
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    control: RunControl = field(init=False)
    runtime: Runtime | None = None

    def __post_init__(self) -> None:
        self.control = RunControl(until_idle_s=self.config.until_idle_s, max_events=self.config.max_events)
        register_control(self.run_id, self.control)
        METRICS.reset()

    def build(self, pipeline: beam.Pipeline) -> None:
        runtime = build_runtime(self.config, self.roots_factory())
        _RUNTIMES[self.run_id] = self.runtime = runtime
        durable = recover(
            self.config.state_dir, self.config.realtime_dir, self.config.master_dir, self.config.worker
        )
        starts = partition_starts(self.config, durable)
        self.control.expect((s.topic, s.partition) for s in starts)
        METRICS.set_partitions(starts)
        options = ConsumerOptions(
            self.config.bootstrap,
            max_records=self.config.poll_max_records,
            poll_timeout_ms=self.config.poll_timeout_ms,
        )
        (
            pipeline
            | "Partitions" >> beam.Create(starts)
            | "ReadKafka" >> beam.ParDo(ReadKafkaPartitions(options, self.run_id))
            | "VerifyScoreFlagSink"
            >> beam.ParDo(ProcessAndSink(self.config, self.roots_factory, self.run_id))
        )

    def run(self) -> None:
        """Build and run the pipeline until a stop condition (blocks)."""
        runner = _runner(self.config.runner)
        options = PipelineOptions(list(self.config.pipeline_args))
        try:
            with beam.Pipeline(runner=runner, options=options) as pipeline:
                self.build(pipeline)
        finally:
            runtime = _RUNTIMES.pop(self.run_id, None)
            if runtime is not None:
                try:
                    if runtime.processor.held:  # the run ends: the ordering buffer is applied, not dropped
                        result = runtime.processor.process_batch([], int(time.time() * 1000))
                        runtime.sinks.add([], result)
                        if runtime.alerts is not None:
                            runtime.alerts.publish(result.rows)
                    if runtime.alerts is not None:
                        runtime.alerts.flush()
                    runtime.sinks.flush(runtime.processor.pending_floor(), final=True)
                finally:
                    runtime.sinks.close()
                    if runtime.alerts is not None:
                        runtime.alerts.close()

    def stop(self) -> None:
        self.control.stop()


def _runner(name: str) -> Any:
    if name == "FnApiRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    if name == "DirectRunner":
        raise SpeedError("the DirectRunner is not supported (it downloads Prism); use FnApiRunner locally")
    return name  # FlinkRunner, DataflowRunner, PortableRunner...: Beam resolves the name
