"""Serving layer: ``python -m bench.bench_serving [--scale F]`` (scale 1 = 10M events).

Measured in one run, over one published batch version plus real-time segments:

* ``serving.vehicle_history``: p50/p99 latency of one vehicle's history through the
  HTTP API (signed request, metering, receipt) vs the same SQL run directly on the
  engine's DuckDB (same snapshot machinery, no HTTP) — ratio = API p50 / direct p50.
* ``serving.fleet_aggregate``: the same for a fleet aggregate.
* ``serving.concurrency``: queries/s with 16 concurrent clients, errors, and the
  process RSS before/after 10,000 queries (flat memory = small growth).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import psutil

from bench.common import record
from pipelines.dataset import MASTER_SCHEMA
from serving.api import create_app
from serving.client import PccClient
from serving.config import ServingConfig
from serving.pricing import InMemoryBilling
from tests.fixtures.serving import CONSUMER_KEY, PRICES, RunningServer, vehicle_id, write_segment


def _generate(data: Path, n: int, vehicles: int) -> None:
    """Write a batch version of ``n`` events and a real-time tail of 20,000 events."""
    con = duckdb.connect()
    types = ("odometer_reading", "maintenance", "inspection", "accident_declaration")
    sources = ("cc-aurora", "garage-net-03", "ins-mutua", "garage-ind-12")
    select = f"""
        SELECT lpad(to_hex(i), 36, '0') AS event_id,
               (['{"','".join(types)}'])[1 + i % 4] AS event_type, 1::SMALLINT AS schema_version,
               (['{"','".join(sources)}'])[1 + i % 4] AS source_id,
               'v-' || lpad(to_hex(i % {vehicles}), 32, '0') AS vehicle,
               TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_seconds(i) AS event_time,
               TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_seconds(i) AS ingestion_time,
               TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_seconds(i) AS processed_time,
               (1000 + i // {vehicles})::BIGINT AS odometer_km, 48.1 AS lat, 11.5 AS lon,
               '{{"odometer_km":' || (1000 + i // {vehicles}) || '}}' AS payload,
               md5(i::VARCHAR) AS leaf_hash, i::BIGINT AS log_index, (i + 1)::BIGINT AS tree_size,
               md5(i::VARCHAR) AS root, 'verified' AS verification, 0.9 AS quality, 1.0 AS q_source,
               1.0 AS q_proof, 1.0 AS q_consistency, 1.0 AS q_timeliness, 1.0 AS q_completeness,
               []::VARCHAR[] AS flags, 'pcc.telemetry' AS topic, 0 AS partition, i::BIGINT AS "offset",
               strftime(TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_seconds(i), '%Y-%m-%d') AS event_date
        FROM range(?, ?) t(i)"""
    assert len(MASTER_SCHEMA.names) == 28
    version = data / "batch" / "versions" / "bench" / "vehicle_history"
    version.mkdir(parents=True)
    con.execute(
        f"COPY ({select.replace('?', str(0), 1).replace('?', str(n), 1)}) TO '{version}/part-0.parquet'"
    )
    tail = con.sql(select.replace("?", str(n), 1).replace("?", str(n + 20_000), 1)).to_arrow_table()
    con.close()
    wm = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n - 1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    manifest = {
        "version": "bench",
        "published_at": datetime.now(UTC).isoformat(),
        "watermark": {"processed_time": wm, "event_time": wm, "events": n},
        "views": {"vehicle_history": "versions/bench/vehicle_history"},
    }
    (data / "batch" / "CURRENT.json").write_text(json.dumps(manifest))
    for k in range(0, tail.num_rows, 2000):
        write_segment(data, tail.slice(k, 2000).cast(MASTER_SCHEMA))


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_ms": round(statistics.median(samples) * 1000, 2),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000, 2),
        "n": len(samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_serving")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n = max(100_000, int(10_000_000 * args.scale))
    vehicles = max(1000, n // 100)
    queries = max(500, int(10_000 * min(args.scale, 1.0)))
    with tempfile.TemporaryDirectory(prefix="pcc-bench-serving-") as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        _generate(data, n, vehicles)
        config = ServingConfig(data_dir=data, max_rows=1_000_000, query_timeout_s=60, settle_every_s=3600)
        billing = InMemoryBilling(PRICES)
        from eth_account import Account

        billing.fund(Account.from_key(CONSUMER_KEY).address, 10**15)
        app = create_app(config, billing)
        print(f"loaded {n} events in {time.perf_counter() - t0:.1f} s (version {app.state.store.version})")
        store = app.state.store
        one = f"SELECT * FROM vehicle_history WHERE vehicle = '{vehicle_id(7)}' ORDER BY event_time"
        fleet = "SELECT event_type, count(*) AS n, avg(odometer_km) AS km FROM vehicle_history GROUP BY 1"

        def direct(sql: str, times: int) -> list[float]:
            out = []
            for _ in range(times):
                start = time.perf_counter()
                with store.pin() as (cur, _v):
                    cur.sql(sql).to_arrow_table()
                out.append(time.perf_counter() - start)
            return out

        with RunningServer(app) as server, PccClient(server.url, CONSUMER_KEY) as client:

            def api(sql: str, times: int) -> list[float]:
                out = []
                for _ in range(times):
                    start = time.perf_counter()
                    client.query(sql)
                    out.append(time.perf_counter() - start)
                return out

            api(one, 20), direct(one, 20)
            for name, sql, times in (("vehicle_history", one, 500), ("fleet_aggregate", fleet, 30)):
                d = _percentiles(direct(sql, times))
                a = _percentiles(api(sql, times))
                record(
                    f"serving.{name}",
                    {**a, "events": n, "ratio_is": "API p50 / direct DuckDB p50"},
                    d,
                    a["p50_ms"] / d["p50_ms"],
                )
            proc = psutil.Process(os.getpid())
            rss_before = proc.memory_info().rss
            errors: list[str] = []
            done = [0]
            lock = threading.Lock()

            def worker(count: int) -> None:
                with PccClient(server.url, CONSUMER_KEY) as c:
                    for i in range(count):
                        try:
                            c.query(one if i % 2 else one.replace(vehicle_id(7), vehicle_id(i % vehicles)))
                        except Exception as exc:
                            errors.append(repr(exc))
                        with lock:
                            done[0] += 1

            start = time.perf_counter()
            threads = [threading.Thread(target=worker, args=(queries // 16,)) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
            rss_after = proc.memory_info().rss
            direct_qps = 200 / sum(direct(one, 200))
            record(
                "serving.concurrency",
                {
                    "clients": 16,
                    "queries": done[0],
                    "qps": round(done[0] / elapsed, 1),
                    "errors": len(errors),
                    "rss_before_mb": round(rss_before / 2**20),
                    "rss_after_mb": round(rss_after / 2**20),
                    "ratio_is": "API qps (16 clients) / direct sequential qps",
                },
                {"direct_qps": round(direct_qps, 1)},
                (done[0] / elapsed) / direct_qps,
            )
            if errors:
                print("first errors:", errors[:3])
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
