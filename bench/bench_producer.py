"""Producer throughput: the full SDK (validate, pseudonymise, hash, log, anchor, prove, publish)
against a bare Kafka producer sending the very same bytes, in the same run, on the same broker.

Starts its own broker and anvil node on free ports under a temporary directory, and stops them.
Also reports the process's resident memory after N/2 and after N events (the log keeps
its compact range, not every leaf, so it should stay flat).

    python -m bench.bench_producer [--scale 1.0]     # 1.0 = 100k events
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import struct
import tempfile
import time
from pathlib import Path

from bench.common import record
from bench.stack import bench_settings, running_broker


def _records(count: int, offset: int = 0, source_id: str = "cc-bench") -> list[dict]:
    from pipelines.events import format_time
    from pipelines.vin import with_check_digit

    base = 1_767_225_600_000  # 2026-01-01
    return [
        {
            "event_type": "odometer_reading",
            "schema_version": 1,
            "source_id": source_id,
            "vin": with_check_digit(f"WVWZZZ1KZ{(i % 5000):08d}"),
            "event_time": format_time(base + i * 1000),
            "payload": {
                "odometer_km": 10_000 + i,
                "location": {"lat": 48.1, "lon": 11.5},
                "firmware": "4.2.1",
            },
        }
        for i in range(offset, offset + count)
    ]


class _Capture:
    """Wraps the real publisher and spools the wire bytes to a file, for the bare-producer reference
    (on disk, so they do not count in the producer's memory)."""

    def __init__(self, inner, path: Path):
        self.inner = inner
        self.path = path
        self.file = open(path, "wb")  # noqa: SIM115
        self.count = 0

    def publish(self, events):
        for e in events:
            self.file.write(struct.pack(">II", len(e.key), len(e.value)) + e.key + e.value)
        self.count += len(events)
        return self.inner.publish(events)

    def close(self):
        self.file.close()
        self.inner.close()

    def values(self):
        data = self.path.read_bytes()
        pos = 0
        while pos < len(data):
            klen, vlen = struct.unpack_from(">II", data, pos)
            pos += 8
            yield data[pos : pos + klen], data[pos + klen : pos + klen + vlen]
            pos += klen + vlen


def _rss_kib() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss // 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_producer")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n = max(2_000, int(100_000 * args.scale))

    from kafka import KafkaProducer

    from infra.chain import node
    from infra.kafka import ensure_topics
    from infra.procs import free_ports
    from ledger.onboarding import deploy_consortium, register_source
    from pipelines.producer import Producer, load_anchor
    from pipelines.producer.kafka import KafkaPublisher
    from pipelines.vault import IdentityVault

    with tempfile.TemporaryDirectory(prefix="pcc-bench-producer-") as tmp, contextlib.ExitStack() as stack:
        kport, cport, cport2 = free_ports(3)
        settings = bench_settings(
            Path(tmp),
            kafka={"bootstrap": f"127.0.0.1:{kport}", "controller_port": cport},
            ledger={"rpc_url": f"http://127.0.0.1:{cport2}", "chain": "anvil"},
            producer={"checkpoint_every": 1024, "checkpoint_seconds": 5.0},
        )
        stack.enter_context(running_broker(settings))
        chain_state = Path(tmp) / "chain"
        node.start("anvil", cport2, chain_state)
        stack.callback(node.stop, chain_state)
        ensure_topics(settings)
        deploy_consortium(settings)
        register_source(settings, "cc-bench", "connected_car", 1)
        vault = IdentityVault(settings)
        records = _records(n)
        # the clear contract (version 1) first, on its own source: the reference for sealing's cost
        register_source(settings, "cc-bench-clear", "connected_car", 1)
        clear = settings.model_copy(
            update={"producer": settings.producer.model_copy(update={"contract_version": 1})}
        )
        clear_publisher = KafkaPublisher(settings.kafka.bootstrap)
        clear_producer = Producer(
            clear, source_id="cc-bench-clear", source_kind="connected_car", anchor=load_anchor(settings),
            publisher=clear_publisher, vault=vault,
        )  # fmt: skip
        started = time.perf_counter()
        for raw in _records(n, source_id="cc-bench-clear"):
            clear_producer.submit(raw)
        clear_report = clear_producer.close()
        clear_s = time.perf_counter() - started

        publisher = _Capture(KafkaPublisher(settings.kafka.bootstrap), Path(tmp) / "wire.bin")
        producer = Producer(
            settings, source_id="cc-bench", source_kind="connected_car", anchor=load_anchor(settings),
            publisher=publisher, vault=vault,
        )  # fmt: skip
        gc.collect()
        started = time.perf_counter()
        half = n // 2
        for raw in records[:half]:
            producer.submit(raw)
        producer.flush()
        gc.collect()
        mem_half = _rss_kib()
        for raw in records[half:]:
            producer.submit(raw)
        report = producer.close()
        sdk_s = time.perf_counter() - started
        gc.collect()
        mem_full = _rss_kib()

        # reference: a bare producer sending the same bytes to the same broker
        bare = KafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap, acks="all", enable_idempotence=True,
            linger_ms=5, batch_size=256 * 1024,
        )  # fmt: skip
        started = time.perf_counter()
        futures = [bare.send("pcc.telemetry", key=k, value=v) for k, v in publisher.values()]
        bare.flush()
        for f in futures:
            f.get(timeout=60)
        bare_s = time.perf_counter() - started
        bare.close()

    sdk_rate = report.published / sdk_s
    bare_rate = publisher.count / bare_s
    record(
        "producer_throughput",
        {
            "events": report.published,
            "events_per_s": round(sdk_rate),
            "checkpoints": report.checkpoints,
            "gas_per_event": round(report.gas_used / max(1, report.published), 1),
            "rss_after_half_kib": mem_half,
            "rss_after_all_kib": mem_full,
            "ratio_is": "SDK events/s over bare kafka-python events/s, same bytes, same broker (target >= 0.5)",
        },
        {"bare_events_per_s": round(bare_rate)},
        sdk_rate / bare_rate,
    )
    clear_rate = clear_report.published / clear_s
    record(
        "producer.sealing",
        {
            "sealed_events_per_s": round(sdk_rate),
            "ratio_is": "SDK events/s sealing protected fields (contract v2) over the same SDK on the clear "
            "contract v1, same records, same run (target >= 0.85)",
        },
        {"clear_events_per_s": round(clear_rate)},
        sdk_rate / clear_rate,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
