"""Access control on the hot paths: ``python -m bench.bench_access [--scale F]``.

Two figures, each a ratio against a reference measured in the same run:

* ``access.speed``: the speed layer's per-event logic (``speed.process.EventProcessor``:
  parse, validate, hash, proof, rules, quality, and the sealing of protected fields
  with a warm key ring over a real vault) on maintenance events with a location and
  prices, vs the same processor with sealing replaced by the plain canonical payload
  (what it stored before sealing).  Target: ratio (events/s with / without) >= 0.90.
* ``access.query``: a grantee's vehicle-history query through the HTTP API
  (signed request, sandbox, metering, receipt, wrapped keys for the rows' epochs,
  client-side opening of every protected field) vs the same query by the same
  consumer without a grant key, read the same way (rows with the payload parsed),
  protected fields left sealed.  Run over each grant store of ``--grant-store``:
  ``sqlite`` (recorded as ``access.query``) and ``chain`` (``access.query.chain``:
  grants on the AccessRegistry through ``ChainGrantStore`` on the in-process EVM,
  read from its in-memory index), each with its own public reference.
  Target: ratio (p50 with / without) <= 1.20.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import funded_serving_app, record

VIN_BASE = "WVWZZZ1JZXW"
CONSUMER_KEY = "0x" + "55" * 32
PRICES = {
    "mileage": 2, "maintenance": 3, "inspection": 4, "accident": 5, "owner_identity": 9,
    "precise_location": 1, "commercial": 1, "fraud_score": 7, "source_reputation": 1,
}  # fmt: skip


def _vin(i: int) -> str:
    from pipelines.vin import with_check_digit

    return with_check_digit(f"{VIN_BASE}{i:06d}")


def _maintenance(src: Any, vehicle: str, km: int, event_ms: int) -> dict[str, Any]:
    from pipelines.events import format_time, new_event_id

    return {
        "event_id": new_event_id(), "event_type": "maintenance", "schema_version": 1,
        "source_id": src.source_id, "vehicle": vehicle, "event_time": format_time(event_ms),
        "ingestion_time": format_time(event_ms + 1000),
        "payload": {
            "odometer_km": km, "service_type": "oil_change", "in_network": True, "items": ["oil", "filter"],
            "cost_cents": 18990, "invoice_ref": "INV-2026-0042",
            "location": {"lat": 48.856613 + km % 97 / 1e4, "lon": 2.352222},
        },
    }  # fmt: skip


def bench_speed(data: Path, events: int, rounds: int = 7) -> None:
    from pipelines import canonical
    from pipelines.access import KeyRing, SqliteGrantStore
    from pipelines.vault import IdentityVault
    from speed.config import SpeedConfig
    from speed.process import EventProcessor
    from speed.roots import InMemoryRoots
    from speed.source import KafkaRecord
    from tests.fixtures.synthetic import SyntheticSource, wire

    class Unsealed(EventProcessor):
        def _seal(self, env: Any) -> str:  # the reference: the plaintext payload, as stored before sealing
            return canonical.canonical_bytes(env["payload"]).decode()

    vault = IdentityVault(data / "vault" / "identity.sqlite")
    keys = KeyRing(vault, SqliteGrantStore(data / "vault" / "grants.sqlite"), cache_s=1.0)
    vehicles = [vault.pseudonymize_vehicle(_vin(i)) for i in range(200)]
    roots = InMemoryRoots()
    src = SyntheticSource("garage-net-03", roots, checkpoint_every=events + 1)
    start = int(time.time() * 1000) - 400 * 86_400_000
    for i in range(events):
        src.append(_maintenance(src, vehicles[i % len(vehicles)], 1000 + i, start + i * 60_000))
    envs = src.checkpoint()
    records = [KafkaRecord("pcc.garage", 0, i, 0, None, wire(e)) for i, e in enumerate(envs)]
    config = SpeedConfig(bootstrap="127.0.0.1:1", data_dir=data, topics=("pcc.garage",), deadletter_topic="d")

    def run(cls: type[EventProcessor]) -> float:
        processor = cls(config, roots, keys=keys)
        now = int(time.time() * 1000)
        started = time.thread_time()  # CPU time of this thread: what the processor costs, not the neighbours
        for i in range(0, len(records), 500):
            result = processor.process_batch(records[i : i + 500], now)
            assert not result.dead, result.dead[:1]
        return time.thread_time() - started

    run(EventProcessor), run(Unsealed)  # warm up: schemas, key ring, caches
    times: dict[type[EventProcessor], list[float]] = {EventProcessor: [], Unsealed: []}
    for _ in range(rounds):  # interleaved, so both see the same (shared, noisy) machine
        for cls in times:
            times[cls].append(run(cls))
    sealed, plain = min(times[EventProcessor]), min(times[Unsealed])
    n = len(records)
    record(
        "access.speed",
        {"events_per_s": round(n / sealed), "seal_us_per_event": round((sealed - plain) / n * 1e6, 2),
         "ratio_is": "EventProcessor events/s with sealing / without, same run (target >= 0.90)"},
        {"events_per_s_without_sealing": round(n / plain)},
        plain / sealed,
    )  # fmt: skip
    vault.close()


def _grant_store(kind: str, data: Path) -> Any:
    """The grant store the query runs over: SQLite beside the vault, or the AccessRegistry.

    ``chain``: a ChainGrantStore on the in-process EVM, reads served from its
    in-memory index of the registry's events (refreshed at most every second,
    as ``access.cache_s`` does in ``pcc serve``).
    """
    from pipelines.access import SqliteGrantStore

    if kind == "sqlite":
        return SqliteGrantStore(data / "vault" / "grants.sqlite")
    from ledger.chain import in_process_web3
    from ledger.client import LedgerClient
    from ledger.config import DEV_KEYS
    from ledger.deploy import deploy
    from ledger.grants import ChainGrantStore
    from ledger.tx import Signer

    w3 = in_process_web3()
    operator = Signer(w3, DEV_KEYS[0])
    client = LedgerClient(w3, deploy(w3, operator), operator)
    return ChainGrantStore(client, data / "vault" / "grant-details.sqlite", refresh_s=1.0)


def bench_query(data: Path, vehicles: int, per_vehicle: int, queries: int, store: str = "sqlite") -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fastapi.testclient import TestClient

    from pipelines.access import AccessService, ConsumerKeyPair
    from pipelines.dataset import MASTER_SCHEMA
    from pipelines.vault import IdentityVault
    from serving.client import PccClient
    from speed.config import SpeedConfig
    from speed.process import EventProcessor
    from speed.roots import InMemoryRoots
    from speed.source import KafkaRecord
    from tests.fixtures.synthetic import SyntheticSource, wire

    vault = IdentityVault(data / "vault" / "identity.sqlite")
    grants = _grant_store(store, data)
    access = AccessService(vault, grants)
    cars = [vault.pseudonymize_vehicle(_vin(i)) for i in range(vehicles)]
    owner = vault.pseudonymize_owner({"name": "Ana Silva", "id_number": "PT-1"})
    vault.record_ownership(cars[0], owner, since_ms=1)
    roots = InMemoryRoots()
    src = SyntheticSource("garage-net-03", roots, checkpoint_every=vehicles * per_vehicle + 1)
    start = int(time.time() * 1000) - 400 * 86_400_000
    for i in range(vehicles * per_vehicle):
        src.append(_maintenance(src, cars[i % vehicles], 1000 + i, start + i * 60_000))
    envs = src.checkpoint()
    config = SpeedConfig(bootstrap="127.0.0.1:1", data_dir=data, topics=("pcc.garage",), deadletter_topic="d")
    processor = EventProcessor(config, roots, keys=access.keys)
    records = [KafkaRecord("pcc.garage", 0, i, 0, None, wire(e)) for i, e in enumerate(envs)]
    rows = processor.process_batch(records, int(time.time() * 1000)).rows
    (data / "realtime").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=MASTER_SCHEMA), data / "realtime" / "seg-1-w0-1.parquet")

    keys = ConsumerKeyPair.generate()
    for category in ("precise_location", "commercial"):
        access.grant_as_owner(keys.public_key, cars[0], category, 4_000_000_000)
    app = funded_serving_app(data, access, PRICES, CONSUMER_KEY)
    sql = f"SELECT * FROM vehicle_history WHERE vehicle = '{cars[0]}' ORDER BY event_time"
    with TestClient(app) as http:
        granted = PccClient("http://bench", CONSUMER_KEY, grant_keys=keys, http=http)
        public = PccClient("http://bench", CONSUMER_KEY, http=http)

        def with_grant() -> None:
            opened = granted.query(sql).opened
            assert isinstance(opened[0]["payload"]["location"], dict)

        def without() -> None:  # read the same way (payload parsed), protected fields left sealed
            rows = public.query(sql).opened
            assert len(rows) == per_vehicle and isinstance(rows[0]["payload"]["location"], str)

        samples: dict[str, list[float]] = {"grant": [], "public": []}
        for i in range(queries + 10):  # interleaved, so both see the same machine
            for name, fn in (("grant", with_grant), ("public", without)):
                started = time.perf_counter()
                fn()
                if i >= 10:
                    samples[name].append(time.perf_counter() - started)
    p50 = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    record(
        "access.query" if store == "sqlite" else f"access.query.{store}",
        {"p50_ms": round(p50["grant"], 2), "rows": per_vehicle, "grant_store": store,
         "ratio_is": "p50 grantee query with protected fields opened / same query public only, same run "
                     "(target <= 1.20)"},
        {"p50_ms_public": round(p50["public"], 2)},
        p50["grant"] / p50["public"],
    )  # fmt: skip
    vault.close()
    grants.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_access", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--grant-store", nargs="+", choices=("sqlite", "chain"), default=["sqlite", "chain"],
        help="grant stores to run the query figure over (chain: AccessRegistry on the in-process EVM)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pcc-bench-access-") as tmp:
        bench_speed(Path(tmp) / "speed", max(1000, int(10_000 * args.scale)))
        for store in args.grant_store:
            bench_query(Path(tmp) / f"query-{store}", 50, 100, max(20, int(200 * args.scale)), store)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
