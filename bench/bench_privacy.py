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
* ``privacy.query``: a grantee's vehicle-history query through the HTTP API
  over version 2 rows (sealed at the producer: signed request, sandbox,
  metering, receipt, wrapped keys, client-side opening of every protected
  field, each opened value checked against its salted commitment) vs the same
  query by the same consumer without a grant key, read the same way (payload
  parsed), protected fields left sealed: wall time p50, interleaved.
  Target <= 1.20.

    python -m bench.bench_privacy [--scale 1.0] [--only producer speed query]   # 1.0 = 10k events per run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bench.common import funded_serving_app, record

if TYPE_CHECKING:
    from pipelines.events import Envelope

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
    from pipelines.settings import ProducerSettings, Settings, VaultSettings
    from pipelines.vault import IdentityVault

    start = int(time.time() * 1000) - 400 * 86_400_000
    inputs = [_input(i, start) for i in range(events)]
    shared = Settings(data_dir=data / "shared")
    vault = IdentityVault(shared)  # one vault: pseudonyms and keys cached alike for both
    runs = 0

    def run(version: Literal[1, 2]) -> float:
        nonlocal runs
        runs += 1
        settings = Settings(
            data_dir=data / f"run-{runs}",
            vault=VaultSettings(
                path=shared.path("vault", "identity.sqlite"), key_file=shared.path("vault", "vault.key")
            ),
            producer=ProducerSettings(
                checkpoint_every=1024, checkpoint_seconds=3600, contract_version=version
            ),
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
    envelopes: list[Envelope] = [
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

    # what the format itself costs: per protected member one AES-256-GCM seal and one SHA-256
    # commitment, and two roundings for the region (no Python around them): the floor of sealing
    import hashlib
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from pipelines.access.sealing import committed_members
    from pipelines.dataset import region

    members = [m for m in committed_members("maintenance") if m[0] in inputs[0]["payload"]]
    aead = AESGCM(os.urandom(32))
    aad = b"pcc-field-v1\x00" + b"v" * 34 + b"\x00" + b"e" * 36 + b"\x00$.payload.x\x00commercial\x000"
    plains = [os.urandom(16) + b"%d" % 18990, os.urandom(16) + b'"INV-2026-000001"',
              os.urandom(16) + b'{"lat":48.856613,"lon":2.352222}']  # fmt: skip
    nonce = os.urandom(12)

    def primitives() -> float:
        started = time.thread_time()
        for _ in range(events):
            for plain in plains[: len(members)]:
                hashlib.sha256(plain).hexdigest()
                aead.encrypt(nonce, plain, aad)
            region(48.856613), region(2.352222)
        return time.thread_time() - started

    run(2), run(1), seal_only(), primitives()  # warm up: schemas, vault cache, grant store, ciphers
    times: dict[int, list[float]] = {2: [], 1: [], 0: [], -1: []}
    for _ in range(rounds):
        times[2].append(run(2))
        times[1].append(run(1))
        times[0].append(seal_only())
        times[-1].append(primitives())
    sealed, clear, alone, floor = min(times[2]), min(times[1]), min(times[0]), min(times[-1])
    record(
        "privacy.producer",
        {"events_per_s": round(events / sealed), "seal_us_per_event": round((sealed - clear) / events * 1e6, 2),
         "seal_event_alone_us": round(alone / events * 1e6, 2),
         "bound_if_sealing_cost_only_seal_event": round(clear / (clear + alone), 3),
         "crypto_floor_us": round(floor / events * 1e6, 2), "protected_members": len(members),
         "bound_if_sealing_cost_only_its_crypto": round(clear / (clear + floor), 3),
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
    from tests.fixtures.synthetic import SyntheticSource, wire

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
            env: Envelope = {"event_id": new_event_id(), "event_type": "maintenance", "schema_version": 1,
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


def bench_query(data: Path, vehicles: int, per_vehicle: int, queries: int) -> None:
    import statistics

    import pyarrow as pa
    import pyarrow.parquet as pq
    from fastapi.testclient import TestClient

    from pipelines.access import AccessService, ConsumerKeyPair, SqliteGrantStore, seal_event
    from pipelines.dataset import MASTER_SCHEMA
    from pipelines.events import format_time, new_event_id
    from pipelines.vault import IdentityVault
    from serving.client import PccClient
    from speed.config import SpeedConfig
    from speed.process import EventProcessor
    from speed.roots import InMemoryRoots
    from speed.source import KafkaRecord
    from tests.fixtures.synthetic import SyntheticSource, wire

    vault = IdentityVault(data / "vault" / "identity.sqlite")
    grants = SqliteGrantStore(data / "vault" / "grants.sqlite")
    access = AccessService(vault, grants)
    cars = [vault.pseudonymize_vehicle(_vin(i)) for i in range(vehicles)]
    vault.record_ownership(
        cars[0], vault.pseudonymize_owner({"name": "Ana Silva", "id_number": "PT-1"}), since_ms=1
    )
    roots = InMemoryRoots()
    src = SyntheticSource("garage-net-03", roots, checkpoint_every=vehicles * per_vehicle + 1)
    start = int(time.time() * 1000) - 400 * 86_400_000
    for i in range(vehicles * per_vehicle):  # version 2: sealed as the producer SDK seals, before the leaf
        raw = _input(i, start)
        env: Envelope = {"event_id": new_event_id(), "event_type": "maintenance", "schema_version": 1,
               "source_id": src.source_id, "vehicle": cars[i % vehicles], "event_time": raw["event_time"],
               "ingestion_time": format_time(start + i * 60_000 + 1000), "payload": raw["payload"]}  # fmt: skip
        src.append(seal_event(env, access.keys.key_for(env["vehicle"])))
    config = SpeedConfig(bootstrap="127.0.0.1:1", data_dir=data, topics=("pcc.garage",), deadletter_topic="d")
    processor = EventProcessor(config, roots, keys=access.keys)
    records = [KafkaRecord("pcc.garage", 0, i, 0, None, wire(e)) for i, e in enumerate(src.checkpoint())]
    result = processor.process_batch(records, int(time.time() * 1000))
    assert not result.dead and all(r["schema_version"] == 2 for r in result.rows)
    (data / "realtime").mkdir(exist_ok=True)
    table = pa.Table.from_pylist(result.rows, schema=MASTER_SCHEMA)
    pq.write_table(table, data / "realtime" / "seg-1-w0-1.parquet")

    keys = ConsumerKeyPair.generate()
    for category in ("precise_location", "commercial"):
        access.grant_as_owner(keys.public_key, cars[0], category, 4_000_000_000)
    prices = {"mileage": 2, "maintenance": 3, "inspection": 4, "accident": 5, "owner_identity": 9,
              "precise_location": 1, "commercial": 1, "fraud_score": 7, "source_reputation": 1}  # fmt: skip
    consumer = "0x" + "55" * 32
    app = funded_serving_app(data, access, prices, consumer)
    sql = f"SELECT * FROM vehicle_history WHERE vehicle = '{cars[0]}' ORDER BY event_time"
    with TestClient(app) as http:
        granted = PccClient("http://bench", consumer, grant_keys=keys, http=http)
        public = PccClient("http://bench", consumer, http=http)

        def with_grant() -> None:
            opened = granted.query(sql).opened
            assert len(opened) == per_vehicle and isinstance(opened[0]["payload"]["location"], dict)

        def without() -> None:  # read the same way (payload parsed), protected fields left sealed
            rows = public.query(sql).opened
            assert len(rows) == per_vehicle and isinstance(rows[0]["payload"]["location"], str)

        samples: dict[str, list[float]] = {"grant": [], "public": []}
        for i in range(queries + 10):  # interleaved, so both see the same machine; 10 warm-up rounds
            for name, fn in (("grant", with_grant), ("public", without)):
                started = time.perf_counter()
                fn()
                if i >= 10:
                    samples[name].append(time.perf_counter() - started)
    p50 = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    record(
        "privacy.query",
        {"p50_ms": round(p50["grant"], 2), "rows": per_vehicle, "schema_version": 2,
         "ratio_is": "p50 grantee query opening v2 sealed fields (commitments checked) / same query public "
                     "only, same run (target <= 1.20)"},
        {"p50_ms_public": round(p50["public"], 2)},
        p50["grant"] / p50["public"],
    )  # fmt: skip
    app.state.receipts.close()
    app.state.store.close()
    vault.close()
    grants.close()


FIGURES = ("producer", "speed", "query")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_privacy", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES), help="figures to run")
    args = parser.parse_args(argv)
    events = max(1000, int(10_000 * args.scale))
    with tempfile.TemporaryDirectory(prefix="pcc-bench-privacy-") as tmp:
        if "producer" in args.only:
            bench_producer(Path(tmp) / "producer", events)
        if "speed" in args.only:
            bench_speed(Path(tmp) / "speed", events)
        if "query" in args.only:
            bench_query(Path(tmp) / "query", 50, 100, max(20, int(200 * args.scale)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
