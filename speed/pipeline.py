"""The speed layer's Beam pipeline: Kafka -> verify, score, flag -> real-time view, master dataset, dead letters.

Shape with ``speed.state: worker`` (the default; everything after ``Create``
fuses into one stage, so nothing waits for a shuffle and the local runner
streams)::

    Create(PartitionStart per topic partition, from the sinks' durable offsets)
      | ParDo(ReadKafkaPartitions)     splittable DoFn, one list of records per poll
      | ParDo(ProcessAndSink)          EventProcessor + SinkWriter (transactional flush)

With ``speed.state: keyed`` the per-vehicle state lives in Beam keyed state
behind a shuffle (:mod:`speed.keyed`).

Locally it runs on Beam's portable ``FnApiRunner``, chosen explicitly (never
the default ``DirectRunner``).  ``--runner`` and any Beam option are passed
through (``pipeline_args``): see docs/speed.md for Flink and Dataflow.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.typehints import Tuple

from speed.config import SpeedConfig
from speed.errors import SpeedError
from speed.keyed import ApplyKeyed, CheckAndKey, SinkOutcomes
from speed.metrics import METRICS
from speed.runtime import RootsFactory, Runtime, WorkerDoFn, build_runtime, register, unregister
from speed.sinks import Offsets, recover
from speed.source import (
    ConsumerOptions,
    KafkaRecord,
    PartitionStart,
    ReadKafkaPartitions,
    RunControl,
    register_control,
)


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


class ProcessAndSink(WorkerDoFn):
    """Runs the per-event logic on each polled batch and flushes the sinks on time."""

    def process(self, batch: list[KafkaRecord]) -> Any:
        METRICS.started_batch()
        with self._rt.lock:
            self._apply(batch)
            self._rt.flush(force=False)
        return ()

    def _watermark(self) -> int | None:
        """How far every partition has been read (ordering buffer); None once stopping: apply all."""
        if self._config.order_hold_ms is None or self._control.stopped.is_set():
            return None
        return self._control.watermark_ms()

    def _apply(self, batch: list[KafkaRecord]) -> None:
        self._rt.take(batch, self._rt.processor.process_batch(batch, int(time.time() * 1000), self._watermark()))

    def finish_bundle(self) -> None:
        with self._rt.lock:
            if self._rt.processor.pending or self._rt.processor.held:
                self._apply([])
            stopped = self._control.stopped.is_set()
            self._rt.flush(force=stopped, final=stopped)


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
        register(self.run_id, runtime)
        self.runtime = runtime
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
        polls = (
            pipeline
            | "Partitions" >> beam.Create(starts)
            | "ReadKafka" >> beam.ParDo(ReadKafkaPartitions(options, self.run_id))
        )
        args = (self.config, self.roots_factory, self.run_id)
        if self.config.state == "keyed":
            (
                polls
                | "VerifyAndKey" >> beam.ParDo(CheckAndKey(*args))
                | "ScoreFlagPerVehicle"
                >> beam.ParDo(ApplyKeyed(*args)).with_input_types(Tuple[str, Any])  # a str key: deterministic
                | "Sink" >> beam.ParDo(SinkOutcomes(*args))
            )
        else:
            polls | "VerifyScoreFlagSink" >> beam.ParDo(ProcessAndSink(*args))

    def run(self) -> None:
        """Build and run the pipeline until a stop condition (blocks)."""
        runner = _runner(self.config.runner)
        options = PipelineOptions(list(self.config.pipeline_args))
        try:
            with beam.Pipeline(runner=runner, options=options) as pipeline:
                self.build(pipeline)
        finally:
            runtime = unregister(self.run_id)
            if runtime is not None:
                runtime.close()

    def stop(self) -> None:
        self.control.stop()


def _runner(name: str) -> Any:
    if name == "FnApiRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    if name == "DirectRunner":
        raise SpeedError("the DirectRunner is not supported (it downloads Prism); use FnApiRunner locally")
    return name  # FlinkRunner, DataflowRunner, PortableRunner...: Beam resolves the name
