"""Producer throughput: the full SDK (validate, pseudonymise, hash, log, anchor, prove, publish)
against a bare Kafka producer sending the very same bytes, in the same run, on the same broker.

Starts its own broker and anvil node on free ports under a temporary directory, and stops them.
The SDK publishes with the default client (confluent-kafka); the same SDK with kafka-python and
both bare clients are measured in the same run (docs/kafka.md). Also reports the process's
resident memory after N events (the log keeps its compact range, not every leaf).

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
from typing import Any

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


def _bare(client: str, bootstrap: str, wire: list[tuple[bytes, bytes]]) -> float:
    """events/s of a bare producer of ``client`` sending ``wire`` with the SDK's settings (all acknowledged)."""
    from pipelines.producer.kafka import confluent_config, producer_config

    started = time.perf_counter()
    if client == "kafka-python":
        from kafka import KafkaProducer

        config = producer_config(bootstrap, "pcc-bench-bare", 30.0)
        bare = KafkaProducer(**config)
        futures = [bare.send("pcc.telemetry", key=k, value=v) for k, v in wire]
        bare.flush()
        for f in futures:
            f.get(timeout=60)
        elapsed = time.perf_counter() - started
        bare.close()
        return len(wire) / elapsed
    from confluent_kafka import Producer as Librdkafka

    errors: list[object] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    plain = Librdkafka(confluent_config(bootstrap, "pcc-bench-bare", 30.0))
    for k, v in wire:
        while True:
            try:
                plain.produce("pcc.telemetry", v, k, on_delivery=delivered)
                break
            except BufferError:
                plain.poll(0.05)
    if plain.flush(60) or errors:
        raise RuntimeError(f"the bare confluent-kafka producer lost events: {errors[:3]}")
    return len(wire) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_producer")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n = max(2_000, int(100_000 * args.scale))

    from infra.chain import node
    from infra.kafka import ensure_topics
    from infra.procs import free_ports
    from ledger.onboarding import deploy_consortium, register_source
    from pipelines.producer import MemoryAnchor, MemoryPublisher, Producer, load_anchor
    from pipelines.producer.kafka import publisher_for
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
        vault = IdentityVault(settings)

        def variant(client: str, contract: int) -> Any:
            kafka = settings.kafka.model_copy(update={"producer_client": client})
            producer = settings.producer.model_copy(update={"contract_version": contract})
            return settings.model_copy(update={"kafka": kafka, "producer": producer})

        def run_sdk(source: str, client: str, contract: int, capture: Path | None = None) -> tuple[Any, float, Any]:
            register_source(settings, source, "connected_car", 1)
            chosen = variant(client, contract)
            publisher: Any = publisher_for(chosen)
            if capture is not None:
                publisher = _Capture(publisher, capture)
            producer = Producer(
                chosen, source_id=source, source_kind="connected_car", anchor=load_anchor(chosen),
                publisher=publisher, vault=vault,
            )  # fmt: skip
            records = _records(n, source_id=source)
            gc.collect()
            started = time.perf_counter()
            for i, raw in enumerate(records):
                producer.submit(raw)
                if i == n // 2 and capture is not None:
                    producer.flush()
                    gc.collect()
                    mem_half.append(_rss_kib())
            report = producer.close()
            return report, report.published / (time.perf_counter() - started), publisher

        mem_half: list[int] = []
        # not timed: the vault's first sight of the 5,000 vehicles and their data keys, so that every
        # timed run below meets the steady state of a producer that has seen its fleet before
        register_source(settings, "cc-bench-warm", "connected_car", 1)
        warm = Producer(
            settings, source_id="cc-bench-warm", source_kind="connected_car", anchor=MemoryAnchor(),
            publisher=MemoryPublisher(), vault=vault,
        )  # fmt: skip
        for raw in _records(min(n, 5_000), source_id="cc-bench-warm"):
            warm.submit(raw)
        warm.close()
        # the clear contract (version 1) on its own source: the reference for sealing's cost
        _, clear_rate, _ = run_sdk("cc-bench-clear", "confluent-kafka", 1)
        # the SDK on kafka-python: the reference for the choice of client
        _, kp_rate, _ = run_sdk("cc-bench-kp", "kafka-python", 2)
        report, sdk_rate, captured = run_sdk("cc-bench", "confluent-kafka", 2, Path(tmp) / "wire.bin")
        gc.collect()
        mem_full = _rss_kib()
        wire = list(captured.values())
        # references: bare producers sending the same bytes to the same broker with the SDK's settings
        bare_ck = _bare("confluent-kafka", settings.kafka.bootstrap, wire)
        bare_kp = _bare("kafka-python", settings.kafka.bootstrap, wire)

    record(
        "producer_throughput",
        {
            "events": report.published,
            "events_per_s": round(sdk_rate),
            "client": "confluent-kafka",
            "checkpoints": report.checkpoints,
            "gas_per_event": round(report.gas_used / max(1, report.published), 1),
            "rss_after_half_kib": mem_half[0],
            "rss_after_all_kib": mem_full,
            "ratio_is": "SDK events/s (contract v2, confluent-kafka) over a bare confluent-kafka producer's, "
            "same bytes, same settings, same broker (target >= 0.7, and >= 20,000 events/s)",
        },
        {"bare_events_per_s": round(bare_ck)},
        sdk_rate / bare_ck,
    )
    record(
        "producer.client",
        {
            "sdk_events_per_s": round(sdk_rate),
            "bare_confluent_events_per_s": round(bare_ck),
            "bare_kafka_python_events_per_s": round(bare_kp),
            "ratio_is": "SDK events/s publishing with confluent-kafka over the same SDK with kafka-python, "
            "same records, same run (the choice of kafka.producer_client)",
        },
        {"sdk_kafka_python_events_per_s": round(kp_rate)},
        sdk_rate / kp_rate,
    )
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
