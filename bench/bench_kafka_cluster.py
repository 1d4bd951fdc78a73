"""Produce throughput against a local 3-broker cluster (RF 3, acks=all) vs one broker, same run.

``python -m bench.bench_kafka_cluster [--scale F] [--heap 256m]`` starts a
single broker and a three-node cluster of its own on free ports (stopped at the
end), sends the same events with the platform's producer (``KafkaPublisher``:
``acks=all``, idempotent) to each, in batches of 1,000, and records
``kafka.cluster_produce`` (cluster events/s, ratio to the single broker; target
≥ 0.6).  Both run on this machine: the cluster's three JVMs share its cores with
the producer, which a real cluster's nodes would not.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.common import record
from infra.kafka import Broker, ensure_topics
from infra.kafka.cluster import Cluster, NodeAddress
from infra.kafka.config import PACKAGE_DIR
from infra.procs import free_ports
from pipelines.producer.kafka import KafkaPublisher
from pipelines.producer.protocols import OutgoingEvent
from pipelines.settings import KafkaSettings, Settings

JAR_CACHE = PACKAGE_DIR / ".cache" / "libs"
TOPICS = ("pcc.telemetry", "pcc.garage", "pcc.insurer")


def _events(n: int) -> list[OutgoingEvent]:
    payload = "x" * 900  # about the size of an event with its proof
    return [
        OutgoingEvent(
            topic=TOPICS[i % 3],
            key=f"v-{i % 2000:032x}".encode(),
            value=json.dumps({"event_id": f"e-{i:09d}", "pad": payload}).encode(),
            event_id=f"e-{i:09d}",
            log_index=i,
        )
        for i in range(n)
    ]


def _produce(bootstrap: str, events: list[OutgoingEvent]) -> float:
    publisher = KafkaPublisher(bootstrap, delivery_timeout_s=60.0, client_id="pcc-bench")
    try:
        publisher.publish(events[:500])  # connection and metadata, not timed
        started = time.perf_counter()
        for i in range(0, len(events), 1000):
            failed = publisher.publish(events[i : i + 1000])
            if failed:
                raise RuntimeError(f"{len(failed)} events not acknowledged: {failed[0][1]}")
        return len(events) / (time.perf_counter() - started)
    finally:
        publisher.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 100,000 events per target")
    parser.add_argument("--heap", default="256m", help="heap of each broker JVM")
    args = parser.parse_args(argv)
    n = max(5_000, int(100_000 * args.scale))
    events = _events(n)
    with tempfile.TemporaryDirectory(prefix="pcc-bench-kafka-") as tmp:
        single_port, single_controller, *ports = free_ports(8)
        single = Settings(
            data_dir=Path(tmp) / "single",
            kafka=KafkaSettings(
                bootstrap=f"127.0.0.1:{single_port}",
                controller_port=single_controller,
                heap=args.heap,
                libs_dir=JAR_CACHE,
            ),
        )
        broker = Broker(single)
        try:
            broker.start(wait=True, timeout=180)
            ensure_topics(single)
            single_rate = _produce(single.kafka.bootstrap, events)
        finally:
            broker.stop()
        three = Settings(
            data_dir=Path(tmp) / "cluster",
            kafka=KafkaSettings(heap=args.heap, libs_dir=JAR_CACHE),
        )
        nodes = tuple(NodeAddress(i + 1, ports[2 * i], ports[2 * i + 1]) for i in range(3))
        cluster = Cluster.create(three, 3, nodes)
        try:
            began = time.perf_counter()
            cluster.start(wait=True, timeout=240)
            start_s = time.perf_counter() - began
            ensure_topics(cluster.client_settings)
            cluster_rate = _produce(cluster.bootstrap, events)
        finally:
            cluster.stop()
    record(
        "kafka.cluster_produce",
        {
            "events": n,
            "events_per_s": round(cluster_rate),
            "cluster_start_s": round(start_s, 1),
            "ratio_is": "3 brokers (RF 3, min.insync.replicas=2, acks=all) over 1 broker, same events "
            "and producer, same machine (target >= 0.6)",
        },
        {"single_broker_events_per_s": round(single_rate)},
        cluster_rate / single_rate,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
