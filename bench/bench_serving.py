"""Serving layer: ``python -m bench.bench_serving [--scale F]`` (scale 1 = 10M events).

Measured in one run, over one published batch version plus real-time segments:

* ``serving.vehicle_history``: p50/p99 latency of one vehicle's history through the
  HTTP API (signed request, metering, receipt) vs the same SQL run directly on the
  engine's DuckDB (same snapshot machinery, no HTTP) — ratio = API p99 / direct p99.
* ``serving.fleet_aggregate``: the same for a fleet aggregate.
* ``serving.concurrency``: queries/s with 16 concurrent clients, errors, and the
  server's RSS before/after up to 10,000 queries (every 1,000; capped by ``--max-seconds``).
* ``serving.load_version``: seconds to load the published version into the service.
* ``serving.request_signature``: µs to hash a query's EIP-712 typed data and recover its signer
  (libsecp256k1), against ``eth_account``'s ``encode_typed_data`` + ``recover_message``.
* ``serving.unsigned_flood``: p99 of one paying consumer's vehicle histories while another
  process sends 1,000 unsigned 64 KiB requests in a row, against its p99 without them (blocks
  interleaved) — ratio = p99 with / p99 without (target: at most 1.2).

The API and the direct reference run alternately in blocks, so both see the same machine
load.  The first query of each block is not timed, on either side: it pays for the switch
(the other process was idle for the whole previous block, its caches cold).  Measured at 10M,
20 blocks of 100: the first query of a block took 8.35 ms on average against 6.51 for the
rest through the API, 5.59 against 4.55 direct; twelve of the API's 20 slowest queries were
first of their block, i.e. most of its p99.

The server runs in its own process (``uvicorn``, one worker: the receipts, the
nonces and the in-memory balances are the process's own; FastAPI's thread pool
runs the 16 clients' queries, DuckDB releases the GIL while it scans), so the
clients' signing and decoding do not compete with it for the interpreter.
The direct reference runs in this process on its own engine over the same files.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import httpx
import psutil
from eth_account import Account

from bench.common import record
from pipelines.dataset import MASTER_SCHEMA
from serving.api import create_app
from serving.client import PccClient
from serving.config import ServingConfig
from serving.engine.views import ServingStore
from serving.market.pricing import InMemoryBilling
from tests.fixtures.serving import CONSUMER_KEY, PRICES, free_port, write_segment

EVENTS_PER_VEHICLE = 100
ROWS_PER_FILE = 2_000_000  # as batch/views/build.py writes them
ROW_GROUP_ROWS = 500_000  # about what Spark's 128 MB Parquet blocks hold for this schema


def _vehicle_sql(rank: str, vehicles: int) -> str:
    """A pseudonym for vehicle number ``rank``: random-looking hex like the vault's, ascending in ``rank``."""
    step = 2**64 // vehicles
    return f"'v-' || lower(lpad(to_hex((({rank})::HUGEINT * {step})::UBIGINT), 16, '0')) || left(md5(({rank})::VARCHAR), 16)"


def _events_sql(lo: int, hi: int, rank: str, vehicles: int, batch: bool) -> str:
    k = f"(i % {EVENTS_PER_VEHICLE})" if batch else f"({EVENTS_PER_VEHICLE} + i)"
    t = f"TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_seconds({k} * 86400)"
    p = "TIMESTAMPTZ '2026-01-01 00:00:00+00'" + ("" if batch else " + to_seconds(10 * 365 * 86400 + i)")
    extra = (
        f", ({k} + 1)::BIGINT AS seq, []::VARCHAR[] AS batch_flags, '{{}}' AS flag_evidence" if batch else ""
    )
    types = "['odometer_reading', 'maintenance', 'inspection', 'accident_declaration']"
    sources = "['cc-aurora', 'garage-net-03', 'ins-mutua', 'garage-ind-12']"
    return f"""
        SELECT md5('event-' || i) AS event_id, ({types})[1 + i % 4] AS event_type,
               1::SMALLINT AS schema_version, ({sources})[1 + i % 4] AS source_id,
               {_vehicle_sql(rank, vehicles)} AS vehicle, {t} AS event_time, {t} AS ingestion_time,
               {p} AS processed_time, (1000 + {k} * 150)::BIGINT AS odometer_km, 48.1 AS lat, 11.5 AS lon,
               '{{"odometer_km":' || (1000 + {k} * 150) || '}}' AS payload, md5(i::VARCHAR) || md5('l') AS leaf_hash,
               i::BIGINT AS log_index, (i + 1)::BIGINT AS tree_size, md5(i::VARCHAR) || md5('r') AS root,
               NULL::VARCHAR[] AS proof_path,
               'verified' AS verification, 0.9 AS quality, 1.0 AS q_source, 1.0 AS q_proof,
               1.0 AS q_consistency, 1.0 AS q_timeliness, 1.0 AS q_completeness, []::VARCHAR[] AS flags,
               'pcc.telemetry' AS topic, 0 AS partition, i::BIGINT AS "offset",
               strftime({t}, '%Y-%m-%d') AS event_date{extra}
        FROM range({lo}, {hi}) t(i)"""


def _generate(data: Path, n: int, tail: int) -> list[str]:
    """A published batch version of ``n`` events laid out as the batch layer writes it (range-partitioned
    files of 2M rows sorted by vehicle, ~500k-row row groups) and ``tail`` real-time events of the same
    vehicles; returns the vehicles."""
    vehicles = max(1, n // EVENTS_PER_VEHICLE)
    con = duckdb.connect()
    version = data / "batch" / "versions" / "bench" / "vehicle_history"
    version.mkdir(parents=True)
    files = max(1, -(-n // ROWS_PER_FILE))
    for f in range(files):
        lo, hi = f * n // files, (f + 1) * n // files
        sql = _events_sql(lo, hi, f"i // {EVENTS_PER_VEHICLE}", vehicles, batch=True)
        con.execute(f"COPY ({sql}) TO '{version}/part-{f:05d}.parquet' (ROW_GROUP_SIZE {ROW_GROUP_ROWS})")
    rt = con.sql(_events_sql(n, n + tail, f"i % {vehicles}", vehicles, batch=False)).to_arrow_table()
    names = [
        r[0]
        for r in con.execute(
            f"SELECT {_vehicle_sql('i', vehicles)} FROM range(0, {vehicles}) t(i)"
        ).fetchall()
    ]
    con.close()
    wm = "2026-01-01T00:00:00.000Z"
    manifest = {
        "version": "bench",
        "published_at": datetime.now(UTC).isoformat(),
        "watermark": {"processed_time": wm, "event_time": wm, "events": n},
        "views": {"vehicle_history": "versions/bench/vehicle_history"},
    }
    (data / "batch" / "CURRENT.json").write_text(json.dumps(manifest))
    for k in range(0, rt.num_rows, 2000):
        write_segment(data, rt.slice(k, 2000).cast(MASTER_SCHEMA))
    return names


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_ms": round(statistics.median(samples) * 1000, 2),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000, 2),
        "n": len(samples),
    }


def _config(data: Path) -> ServingConfig:
    # one consumer key plays 16 clients here: its own in-flight and rate limits are lifted
    return ServingConfig(
        data_dir=data,
        max_rows=1_000_000,
        query_timeout_s=60,
        settle_every_s=3600,
        max_in_flight=64,
        rate_per_s=1e9,
        rate_burst=10**9,
    )


def flood(url: str, count: int) -> None:
    """``count`` unsigned requests of the largest accepted body, one after another (the child process)."""
    body = b'{"sql": "SELECT 1 /*' + b"x" * (64 * 1024 - 26) + b'*/"}'
    refused = 0
    with httpx.Client(timeout=30) as http:
        for _ in range(count):
            refused += http.post(f"{url}/v1/query", content=body).status_code == 401
    print(json.dumps({"sent": count, "refused_401": refused}))


def serve(data: Path, port: int) -> None:
    """The service under test, in this process: ``pcc serve`` over ``data``, billed in memory."""
    import uvicorn

    billing = InMemoryBilling(PRICES)
    billing.fund(Account.from_key(CONSUMER_KEY).address, 10**15)
    uvicorn.run(create_app(_config(data), billing), host="127.0.0.1", port=port, log_level="warning")


class ServerProcess:
    """:func:`serve` in a child process; stopped (and only it) on exit."""

    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "bench.bench_serving", "--serve", str(data), "--port", str(self.port)]
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(cmd, cwd=root)

    def __enter__(self) -> ServerProcess:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the serving process exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("the serving process did not answer within 600 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _signature_cost(rounds: int = 300) -> None:
    from eth_account.messages import encode_typed_data

    from serving.auth import RequestDomain, request_digest, sign_request, typed_request
    from serving.eip191 import recover_digest

    domain = RequestDomain(31337, "0x" + "00" * 20, "127.0.0.1:8600")
    body = b'{"sql": "SELECT 1"}'
    headers = sign_request(CONSUMER_KEY, "POST", "/v1/query", body, domain=domain)
    nonce, expires, signature = (
        headers["X-PCC-Nonce"],
        int(headers["X-PCC-Expires"]),
        headers["X-PCC-Signature"],
    )
    start = time.perf_counter()
    for _ in range(rounds):
        recover_digest(request_digest(domain, "POST", "/v1/query", body, nonce, expires), signature)
    ours = (time.perf_counter() - start) / rounds
    typed = typed_request(domain, "POST", "/v1/query", body, nonce, expires)
    start = time.perf_counter()
    for _ in range(rounds // 10):
        Account.recover_message(encode_typed_data(full_message=typed), signature=signature)
    theirs = (time.perf_counter() - start) / (rounds // 10)
    record(
        "serving.request_signature",
        {"us": round(ours * 1e6, 1), "ratio_is": "our digest + recovery / eth_account's (same request)"},
        {"eth_account_us": round(theirs * 1e6, 1)},
        ours / theirs,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_serving")
    parser.add_argument("--scale", type=float, default=0.1, help="1 = 10M events (default 0.1: 1M)")
    parser.add_argument("--queries", type=int, default=10_000, help="queries of the 16-client run")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="cap of the 16-client run")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the child: serve this data dir
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--flood", help=argparse.SUPPRESS)  # the child: unsigned requests to this URL
    args = parser.parse_args(argv)
    if args.flood is not None:
        flood(args.flood, 1000)
        return 0
    if args.serve is not None:
        serve(args.serve, args.port)
        return 0
    _signature_cost()
    n = max(100_000, int(10_000_000 * args.scale))
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="pcc-bench-serving-") as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        vehicles = _generate(data, n, tail=20_000)
        generated = time.perf_counter() - t0
        t0 = time.perf_counter()
        store = ServingStore(_config(data))
        store.refresh()  # builds the version's DuckDB file the server then attaches too
        loaded = time.perf_counter() - t0
        record(
            "serving.load_version",
            {"events": n, "load_s": round(loaded, 1), "ratio_is": "load time / time to generate the Parquet"},
            {"generate_s": round(generated, 1)},
            loaded / generated,
        )
        one = "SELECT * FROM vehicle_history WHERE vehicle = '{v}' ORDER BY event_time"
        fleet = "SELECT event_type, count(*) AS n, avg(odometer_km) AS km FROM vehicle_history GROUP BY 1"

        def pick(sql: str) -> str:
            return sql.format(v=rng.choice(vehicles))

        def direct(sql: str, times: int) -> list[float]:
            with store.pin() as (cur, _v):  # untimed: the switch (module docstring)
                cur.sql(pick(sql)).to_arrow_table()
            out = []
            for _ in range(times):
                text = pick(sql)
                start = time.perf_counter()
                with store.pin() as (cur, _v):
                    cur.sql(text).to_arrow_table()
                out.append(time.perf_counter() - start)
            return out

        with ServerProcess(data) as server, PccClient(server.url, CONSUMER_KEY) as client:

            def api(sql: str, times: int) -> list[float]:
                client.query(pick(sql))  # untimed: the switch (module docstring)
                out = []
                for _ in range(times):
                    text = pick(sql)
                    start = time.perf_counter()
                    client.query(text)
                    out.append(time.perf_counter() - start)
                return out

            api(one, 20), direct(one, 20)
            # the first aggregate on a snapshot also runs its metering scan (kept for the snapshot after)
            start = time.perf_counter()
            client.query(fleet)
            first_fleet_ms = round((time.perf_counter() - start) * 1000, 1)
            for name, sql, times, blocks in (
                ("vehicle_history", one, 2000, 20),
                ("fleet_aggregate", fleet, 60, 6),
            ):
                d, a = [], []
                for _ in range(blocks):  # interleaved, so both see the same machine load
                    d += direct(sql, times // blocks)
                    a += api(sql, times // blocks)
                dp, ap = _percentiles(d), _percentiles(a)
                record(
                    f"serving.{name}",
                    {
                        **ap,
                        "events": n,
                        "p50_ratio": round(ap["p50_ms"] / dp["p50_ms"], 2),
                        **({"first_run_ms": first_fleet_ms} if name == "fleet_aggregate" else {}),
                        "ratio_is": "API p99 / direct DuckDB p99 (same SQL, same run)",
                    },
                    dp,
                    ap["p99_ms"] / dp["p99_ms"],
                )
            quiet: list[float] = []
            flooded: list[float] = []
            refused = 0
            root = Path(__file__).resolve().parent.parent
            for _ in range(3):  # interleaved: without, then with 1,000 unsigned 64 KiB requests
                quiet += api(one, 150)
                child = subprocess.Popen(
                    [sys.executable, "-m", "bench.bench_serving", "--flood", server.url],
                    cwd=root,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                while child.poll() is None:
                    flooded += api(one, 10)
                refused += json.loads(child.stdout.read() if child.stdout else "{}").get("refused_401", 0)
            qp, fp = _percentiles(quiet), _percentiles(flooded)
            record(
                "serving.unsigned_flood",
                {
                    **fp,
                    "unsigned_requests": 3000,
                    "refused_401": refused,
                    "ratio_is": "paying consumer's p99 during the unsigned flood / without it (target <= 1.2)",
                },
                qp,
                fp["p99_ms"] / qp["p99_ms"],
            )
            proc = psutil.Process(server.proc.pid)
            errors: list[str] = []
            done = [0]
            rss: list[int] = []
            lock = threading.Lock()
            deadline = time.monotonic() + args.max_seconds

            def worker(count: int, seed: int) -> None:
                local = random.Random(seed)
                with PccClient(server.url, CONSUMER_KEY) as c:
                    for _ in range(count):
                        if time.monotonic() > deadline:
                            return
                        try:
                            c.query(one.format(v=local.choice(vehicles)))
                        except Exception as exc:
                            errors.append(repr(exc))
                        with lock:
                            done[0] += 1
                            if done[0] % 1000 == 0:
                                rss.append(proc.memory_info().rss)

            rss_before = proc.memory_info().rss
            start = time.perf_counter()
            threads = [threading.Thread(target=worker, args=(args.queries // 16, k)) for k in range(16)]
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
                    "seconds": round(elapsed, 1),
                    "qps": round(done[0] / elapsed, 1),
                    "errors": len(errors),
                    "rss_before_mb": round(rss_before / 2**20),
                    "rss_after_mb": round(rss_after / 2**20),
                    "rss_per_1000_mb": [round(r / 2**20) for r in rss],
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
