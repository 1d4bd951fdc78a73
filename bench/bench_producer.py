"""Producer throughput: the full SDK (validate, pseudonymise, hash, log, anchor, prove, publish)
against a bare Kafka producer sending the very same bytes, in the same run, on the same broker.

Starts its own broker and anvil node on free ports under a temporary directory.
Also reports the producer's memory after N and after 2N events (the log keeps
its compact range, not every leaf, so it should stay flat).

    python -m bench.bench_producer [--scale 1.0]     # 1.0 = 100k events
"""

from __future__ import annotations

import argparse
import gc
import socket
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.common import record


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _records(count: int, offset: int = 0) -> list[dict]:
    from pipelines.events import format_time
    from pipelines.vin import with_check_digit

    base = 1_767_225_600_000  # 2026-01-01
    return [
        {
            "event_type": "odometer_reading",
            "schema_version": 1,
            "source_id": "cc-bench",
            "vin": with_check_digit(f"WVWZZZ1KZ{(i % 5000):08d}"),
            "event_time": format_time(base + i * 1000),
            "payload": {"odometer_km": 10_000 + i, "location": {"lat": 48.1, "lon": 11.5}, "firmware": "4.2.1"},
        }
        for i in range(offset, offset + count)
    ]


class _Capture:
    """Wraps the real publisher and keeps the wire bytes, for the bare-producer reference."""

    def __init__(self, inner):
        self.inner = inner
        self.values: list[tuple[bytes, bytes]] = []

    def publish(self, events):
        self.values.extend((e.key, e.value) for e in events)
        return self.inner.publish(events)

    def close(self):
        self.inner.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_producer")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n = max(2_000, int(100_000 * args.scale))

    from kafka import KafkaProducer

    from infra.chain import node
    from infra.kafka import Broker, ensure_topics
    from ledger.onboarding import deploy_consortium, register_source
    from pipelines.producer import Producer, load_anchor
    from pipelines.producer.kafka import KafkaPublisher
    from pipelines.settings import Settings
    from pipelines.vault import IdentityVault

    with tempfile.TemporaryDirectory(prefix="pcc-bench-producer-") as tmp:
        kport, cport, cport2 = _free_ports(3)
        settings = Settings(
            data_dir=Path(tmp),
            kafka={"bootstrap": f"127.0.0.1:{kport}", "controller_port": cport},
            ledger={"rpc_url": f"http://127.0.0.1:{cport2}", "chain": "anvil", "port": cport2},
            producer={"checkpoint_every": 1024, "checkpoint_seconds": 5.0},
        )
        broker = Broker(settings)
        broker.start(wait=True, timeout=180)
        chain_state = Path(tmp) / "chain"
        node.start("anvil", cport2, chain_state)
        try:
            ensure_topics(settings)
            deploy_consortium(settings)
            register_source(settings, "cc-bench", "connected_car", 1)
            vault = IdentityVault(settings)
            records = _records(n)
            publisher = _Capture(KafkaPublisher(settings.kafka.bootstrap))
            producer = Producer(
                settings, source_id="cc-bench", source_kind="connected_car", anchor=load_anchor(settings),
                publisher=publisher, vault=vault,
            )  # fmt: skip
            gc.collect()
            tracemalloc.start()
            started = time.perf_counter()
            half = n // 2
            for raw in records[:half]:
                producer.submit(raw)
            producer.flush()
            mem_half = tracemalloc.get_traced_memory()[0]
            for raw in records[half:]:
                producer.submit(raw)
            report = producer.close()
            sdk_s = time.perf_counter() - started
            mem_full = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()

            # reference: a bare producer sending the same bytes to the same broker
            bare = KafkaProducer(
                bootstrap_servers=settings.kafka.bootstrap, acks="all", enable_idempotence=True,
                linger_ms=5, batch_size=256 * 1024,
            )  # fmt: skip
            started = time.perf_counter()
            futures = [bare.send("pcc.telemetry", key=k, value=v) for k, v in publisher.values]
            bare.flush()
            for f in futures:
                f.get(timeout=60)
            bare_s = time.perf_counter() - started
            bare.close()
        finally:
            node.stop(chain_state)
            broker.stop()

    sdk_rate = report.published / sdk_s
    bare_rate = len(publisher.values) / bare_s
    record(
        "producer_throughput",
        {
            "events": report.published,
            "events_per_s": round(sdk_rate),
            "checkpoints": report.checkpoints,
            "gas_per_event": round(report.gas_used / max(1, report.published), 1),
            "log_memory_after_half_kib": round(mem_half / 1024),
            "log_memory_after_all_kib": round(mem_full / 1024),
            "ratio_is": "SDK events/s over bare kafka-python events/s, same bytes, same broker (target >= 0.5)",
        },
        {"bare_events_per_s": round(bare_rate)},
        sdk_rate / bare_rate,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
