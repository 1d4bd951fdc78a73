"""A local 3-broker cluster (RF 3, ``min.insync.replicas=2``, acks=all): produce throughput against
one broker, and freshness while a broker is killed.

``python -m bench.bench_kafka_cluster [--scale F] [--heap 256m] [--figures produce freshness]``
starts the brokers it needs on free ports (stopped at the end) and records:

``kafka.cluster_produce``
    the same events sent with the platform's producer (``KafkaPublisher``: ``acks=all``,
    idempotent), in batches of 1,000, to one broker then to the cluster: cluster events/s,
    ratio to the single broker (target ≥ 0.6).
``kafka.freshness_broker_kill``
    the speed layer reads the cluster while events are produced at a steady rate
    (``--rate``, acks=all); a node is ``kill -9``'d after a third of the run and started again
    ``--outage`` seconds later.  Produce → visible in the real-time view: p99 before the kill,
    p99 of the events produced during the outage (target ≤ 10 s), and how long after the
    restart until every second's p99 is back within twice the steady one (target ≤ 30 s);
    events lost or shown twice.  Ratio: outage p99 / 10 s.

Everything runs on this machine: the cluster's three JVMs share its cores with the
producer and the speed layer, which a real cluster's nodes would not.
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
    parser.add_argument("--figures", nargs="+", choices=("produce", "freshness"), default=["produce", "freshness"])
    parser.add_argument("--rate", type=float, default=500.0, help="steady rate for freshness (events/s)")
    parser.add_argument("--outage", type=float, default=15.0, help="seconds the killed node stays down")
    args = parser.parse_args(argv)
    if "produce" in args.figures:
        _produce_figure(args)
    if "freshness" in args.figures:
        _freshness_figure(args)
    return 0


def _cluster(tmp: str, heap: str, ports: list[int]) -> Cluster:
    three = Settings(data_dir=Path(tmp) / "cluster", kafka=KafkaSettings(heap=heap, libs_dir=JAR_CACHE))
    nodes = tuple(NodeAddress(i + 1, ports[2 * i], ports[2 * i + 1]) for i in range(3))
    return Cluster.create(three, 3, nodes)


def _leader_of_most(settings: Settings, topic: str) -> int:
    """The node leading most partitions of ``topic`` (the kill that moves the most leaders)."""
    from collections import Counter

    from infra.kafka.topics import describe_partitions

    leaders = Counter(p.leader for p in describe_partitions(settings, [topic]) if p.leader is not None)
    return leaders.most_common(1)[0][0]


def _freshness_figure(args: argparse.Namespace) -> None:
    import logging

    from bench.bench_speed import _generate, visibility
    from speed.config import SpeedConfig
    from speed.roots import InMemoryRoots

    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # the killed node's refused connections, by design
    seconds = max(30.0, 90.0 * args.scale)
    n = int(args.rate * seconds)
    kill_after = seconds / 3
    with tempfile.TemporaryDirectory(prefix="pcc-bench-kafka-kill-") as tmp:
        cluster = _cluster(tmp, args.heap, free_ports(6))
        try:
            cluster.start(wait=True, timeout=240)
            settings = Settings(
                data_dir=Path(tmp) / "data",
                kafka=KafkaSettings(bootstrap=cluster.bootstrap, topic_prefix="benchkill."),
            )
            ensure_topics(settings)
            config = SpeedConfig.from_settings(
                settings, metrics_port=None, max_events=n, master_flush_interval_s=5.0, until_idle_s=60.0
            )
            roots = InMemoryRoots()
            messages = _generate(n, roots)
            victim = _leader_of_most(settings, config.topics[0])
            marks: dict[str, float] = {}

            def kill_then_restart(t0: float) -> None:
                time.sleep(max(0.0, t0 + kill_after - time.monotonic()))
                marks["kill"] = time.time() * 1000
                cluster.kill(victim)
                time.sleep(args.outage)
                marks["restart"] = time.time() * 1000
                cluster.start_node(victim)
                marks["answering"] = time.time() * 1000

            pairs, achieved, repeated = visibility(
                config, roots, messages, args.rate, durable=True, meanwhile=kill_then_restart
            )
        finally:
            cluster.stop()
    figures = _kill_figures(pairs, marks)
    lost = n - (len(pairs) - repeated)
    record(
        "kafka.freshness_broker_kill",
        {
            **figures,
            "events": n,
            "rate_events_per_s": round(achieved),
            "outage_s": args.outage,
            "killed_node": victim,
            "events_lost": lost,
            "events_shown_twice": repeated,
            "ratio_is": "p99 produce -> visible of the events produced while a node was down / 10 s "
            "(target <= 1); recovered_after_restart_s target <= 30",
        },
        {"target_outage_p99_ms": 10_000, "target_recovery_s": 30},
        figures["outage_p99_ms"] / 10_000,
    )


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")


def _kill_figures(pairs: list[tuple[int, float]], marks: dict[str, float]) -> dict[str, float]:
    """Steady p99 (before the kill), outage p99 (produced while the node was down) and the seconds
    after the restart until every later second's p99 is within twice the steady one."""
    steady = [v - p for p, v in pairs if p < marks["kill"]]
    outage = [v - p for p, v in pairs if marks["kill"] <= p < marks["restart"]]
    after: dict[int, list[float]] = {}
    for p, v in pairs:
        if p >= marks["restart"]:
            after.setdefault(int((p - marks["restart"]) // 1000), []).append(v - p)
    bound = 2 * _p99(steady)
    late = [second for second, values in after.items() if _p99(values) > bound]
    return {
        "steady_p99_ms": round(_p99(steady)),
        "outage_p99_ms": round(_p99(outage)),
        "outage_max_ms": round(max(outage, default=float("nan"))),
        "node_answering_after_s": round((marks["answering"] - marks["restart"]) / 1000, 1),
        "recovered_after_restart_s": float(max(late) + 1) if late else 0.0,
    }


def _produce_figure(args: argparse.Namespace) -> None:
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
        cluster = _cluster(tmp, args.heap, ports)
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


if __name__ == "__main__":
    raise SystemExit(main())
