"""Privacy at the source: what sealing at the producer costs, and what the speed layer saves.

* ``privacy.producer``: the producer SDK (validate, pseudonymise, seal, hash,
  log, prove, publish to an in-memory publisher, checkpoints anchored in
  memory) on maintenance events with a location, a cost and an invoice
  reference (three protected fields in two categories), contract version 2
  (sealed) vs version 1 (clear), blocks interleaved in the same run, CPU time
  of this thread.  No broker and no chain: their cost is the same for both and
  would only dilute the ratio; this is the stricter figure.  Target >= 0.85.
* ``privacy.speed``: ``speed.process.EventProcessor`` on the same events as
  version 2 (sealed at the producer: the speed layer only moves tokens) vs
  version 1 (the speed layer seals), interleaved, CPU time.  Target >= 0.95.

    python -m bench.bench_privacy [--scale 1.0]     # 1.0 = 10k events per run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import record

VIN_BASE = "WVWZZZ1JZXW"


def _vin(i: int) -> str:
    from pipelines.vin import with_check_digit

    return with_check_digit(f"{VIN_BASE}{i:06d}")


def _input(i: int, start_ms: int) -> dict[str, Any]:
    from pipelines.events import format_time

    return {
        "event_type": "maintenance", "schema_version": 1, "source_id": "garage-bench", "vin": _vin(i % 200),
        "event_time": format_time(start_ms + i * 60_000),
        "payload": {
            "odometer_km": 1000 + i, "service_type": "oil_change", "in_network": True, "items": ["oil", "filter"],
            "cost_cents": 18990 + i % 1000, "invoice_ref": f"INV-2026-{i:06d}",
            "location": {"lat": 48.856613 + i % 97 / 1e4, "lon": 2.352222},
        },
    }  # fmt: skip


def bench_producer(data: Path, events: int, rounds: int = 5) -> None:
    from pipelines.producer import MemoryAnchor, MemoryPublisher, Producer
    from pipelines.settings import Settings
    from pipelines.vault import IdentityVault

    start = int(time.time() * 1000) - 400 * 86_400_000
    inputs = [_input(i, start) for i in range(events)]
    shared = Settings(data_dir=data / "shared")
    vault = IdentityVault(shared)  # one vault: pseudonyms and keys cached alike for both
    runs = 0

    def run(version: int) -> float:
        nonlocal runs
        runs += 1
        settings = Settings(
            data_dir=data / f"run-{runs}",
            vault={
                "path": shared.path("vault", "identity.sqlite"),
                "key_file": shared.path("vault", "vault.key"),
            },
            producer={"checkpoint_every": 1024, "checkpoint_seconds": 3600, "contract_version": version},
        )
        pub = MemoryPublisher()
        producer = Producer(settings, source_id="garage-bench", source_kind="garage", anchor=MemoryAnchor(),
                            publisher=pub, vault=vault)  # fmt: skip
        started = time.thread_time()
        for raw in inputs:
            producer.submit(raw)
        producer.close()
        elapsed = time.thread_time() - started
        assert len(pub.sent) == events
        pub.sent.clear()
        return elapsed

    # what sealing alone costs (seal_event on the SDK's clear envelopes, the SDK's keys): the bound
    from pipelines.access import AccessService, open_grant_store, seal_event
    from pipelines.events import new_event_id

    keys = AccessService(vault, open_grant_store(shared), key_cache_s=1.0).keys
    envelopes = [
        {"event_id": new_event_id(), "event_type": r["event_type"], "schema_version": 1, "source_id": r["source_id"],
         "vehicle": vault.pseudonymize_vehicle(r["vin"]), "event_time": r["event_time"],
         "ingestion_time": r["event_time"], "payload": r["payload"]}
        for r in inputs
    ]  # fmt: skip

    def seal_only() -> float:
        started = time.thread_time()
        for env in envelopes:
            seal_event(env, keys.key_for(env["vehicle"]))
        return time.thread_time() - started

    run(2), run(1), seal_only()  # warm up: schemas, vault cache, grant store, ciphers
    times: dict[int, list[float]] = {2: [], 1: [], 0: []}
    for _ in range(rounds):
        for version in times:
            times[version].append(run(version) if version else seal_only())
    sealed, clear, alone = min(times[2]), min(times[1]), min(times[0])
    record(
        "privacy.producer",
        {"events_per_s": round(events / sealed), "seal_us_per_event": round((sealed - clear) / events * 1e6, 2),
         "seal_event_alone_us": round(alone / events * 1e6, 2),
         "bound_if_sealing_cost_only_seal_event": round(clear / (clear + alone), 3),
         "ratio_is": "producer SDK events/s sealing (v2) / clear (v1), same run, CPU time (target >= 0.85)"},
        {"events_per_s_clear": round(events / clear), "clear_us_per_event": round(clear / events * 1e6, 2)},
        clear / sealed,
    )  # fmt: skip
    vault.close()


def bench_speed(data: Path, events: int, rounds: int = 7) -> None:
    from pipelines.access import KeyRing, SqliteGrantStore, seal_event
    from pipelines.events import format_time, new_event_id
    from pipelines.vault import IdentityVault
    from speed.config import SpeedConfig
    from speed.process import EventProcessor
    from speed.roots import InMemoryRoots
    from speed.source import KafkaRecord
    from speed.synthetic import SyntheticSource, wire

    vault = IdentityVault(data / "vault" / "identity.sqlite")
    keys = KeyRing(vault, SqliteGrantStore(data / "vault" / "grants.sqlite"), cache_s=1.0)
    vehicles = [vault.pseudonymize_vehicle(_vin(i)) for i in range(200)]
    roots = InMemoryRoots()
    start = int(time.time() * 1000) - 400 * 86_400_000
    records: dict[int, list[KafkaRecord]] = {}
    for version in (1, 2):
        src = SyntheticSource(f"garage-v{version}", roots, checkpoint_every=events + 1)
        for i in range(events):
            raw = _input(i, start)
            env = {"event_id": new_event_id(), "event_type": "maintenance", "schema_version": 1,
                   "source_id": src.source_id, "vehicle": vehicles[i % 200], "event_time": raw["event_time"],
                   "ingestion_time": format_time(start + i * 60_000 + 1000), "payload": raw["payload"]}  # fmt: skip
            src.append(seal_event(env, keys.key_for(env["vehicle"])) if version == 2 else env)
        records[version] = [
            KafkaRecord("pcc.garage", 0, i, 0, None, wire(e)) for i, e in enumerate(src.checkpoint())
        ]
    config = SpeedConfig(bootstrap="127.0.0.1:1", data_dir=data, topics=("pcc.garage",), deadletter_topic="d")

    def run(version: int) -> float:
        processor = EventProcessor(config, roots, keys=keys)
        now = int(time.time() * 1000)
        batch = records[version]
        started = time.thread_time()
        for i in range(0, len(batch), 500):
            result = processor.process_batch(batch[i : i + 500], now)
            assert not result.dead, result.dead[:1]
        return time.thread_time() - started

    run(2), run(1)
    times: dict[int, list[float]] = {2: [], 1: []}
    for _ in range(rounds):
        for version in times:
            times[version].append(run(version))
    v2, v1 = min(times[2]), min(times[1])
    record(
        "privacy.speed",
        {"events_per_s_v2": round(events / v2), "v2_bytes_per_event": round(sum(len(r.value) for r in records[2]) / events),
         "v1_bytes_per_event": round(sum(len(r.value) for r in records[1]) / events),
         "ratio_is": "EventProcessor events/s on v2 (sealed at the producer) / on v1 (sealed here), same run (target >= 0.95)"},
        {"events_per_s_v1": round(events / v1)},
        v1 / v2,
    )  # fmt: skip
    vault.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_privacy", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    events = max(1000, int(10_000 * args.scale))
    with tempfile.TemporaryDirectory(prefix="pcc-bench-privacy-") as tmp:
        bench_producer(Path(tmp) / "producer", events)
        bench_speed(Path(tmp) / "speed", events)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
