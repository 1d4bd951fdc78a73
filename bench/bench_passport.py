"""Car passport cost: ``python -m bench.bench_passport [--scale F]``.

* ``passport.page``: assembling and rendering the HTML page (SVG curve,
  timeline) of one vehicle with 2,000 events (``--scale`` multiplies it),
  against ``json.dumps`` of the same rows in the same run.
* ``passport.verify``: the verify link on an event of a log of 1,000,000
  leaves (``--scale`` multiplies it) whose audit path is computed from the
  producer's leaf-hash file, against raw SHA-256 over as many 65-byte
  node messages.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path
from typing import Any

from bench.common import record
from pipelines import canonical, merkle
from pipelines.events.envelope import format_time
from serving.passport import (
    InMemoryPassportSource,
    InMemoryRoots,
    LeafFilePaths,
    build_passport,
    render_passport,
)
from serving.passport.verify import verify_event

VEHICLE = "v-" + "ab" * 16


def _row(i: int, t: datetime, km: int, rng: random.Random) -> dict[str, Any]:
    kind = "maintenance" if i % 50 == 49 else "odometer_reading"
    payload: dict[str, Any] = {"odometer_km": km}
    if kind == "maintenance":
        payload |= {"service_type": "oil_change", "in_network": True}
    return {
        "event_id": f"01900000-0000-7000-8000-{i:012x}",
        "event_type": kind,
        "schema_version": 1,
        "source_id": "cc-aurora",
        "vehicle": VEHICLE,
        "event_time": t,
        "ingestion_time": t,
        "odometer_km": km,
        "payload": json.dumps(payload),
        "verification": "verified" if rng.random() < 0.9 else "unverified",
        "quality": round(rng.random(), 3),
        "flags": [],
    }


def bench_page(events: int) -> None:
    rng = random.Random(7)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    rows = [_row(i, start + timedelta(hours=12 * i), 1000 + 37 * i, rng) for i in range(events)]
    source = InMemoryPassportSource(rows)
    best = best_ref = float("inf")
    size = 0
    for _ in range(3):
        t0 = time.perf_counter()
        html = render_passport(build_passport(source, VEHICLE), f"/passport/{VEHICLE}")
        best = min(best, time.perf_counter() - t0)
        size = len(html)
        t0 = time.perf_counter()
        json.dumps(rows, default=str)
        best_ref = min(best_ref, time.perf_counter() - t0)
    record(
        "passport.page",
        {
            "events": events,
            "page_ms": best * 1000,
            "page_kb": size / 1024,
            "ratio_is": "page / json.dumps(rows)",
        },
        {"json_dumps_ms": best_ref * 1000},
        best / best_ref,
    )


def bench_verify(leaves: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "cc-aurora"
        log.mkdir()
        env = {
            "event_id": "01900000-0000-7000-8000-000000000001",
            "event_type": "odometer_reading",
            "schema_version": 1,
            "source_id": "cc-aurora",
            "vehicle": VEHICLE,
            "event_time": format_time(datetime(2026, 1, 1, tzinfo=UTC)),
            "ingestion_time": format_time(datetime(2026, 1, 1, tzinfo=UTC)),
            "payload": {"odometer_km": 1234},
        }
        leaf = canonical.leaf_hash(env)
        index = leaves // 3
        hashes = [sha256(i.to_bytes(8, "big")).digest() for i in range(leaves)]
        hashes[index] = leaf
        merkle.append_leaf_hashes(log / "leaves.bin", hashes)
        roots = InMemoryRoots({("cc-aurora", leaves): merkle.root(hashes)})
        del hashes
        row = {
            **env,
            "event_time": datetime(2026, 1, 1, tzinfo=UTC),
            "ingestion_time": datetime(2026, 1, 1, tzinfo=UTC),
            "payload": json.dumps(env["payload"]),
            "leaf_hash": leaf.hex(),
            "log_index": index,
            "tree_size": leaves,
            "root": "",
        }
        t0 = time.perf_counter()
        result = verify_event(row, roots, LeafFilePaths({"cc-aurora": log}))
        seconds = time.perf_counter() - t0
        if result.status != "verified":
            raise SystemExit(f"verify failed: {result.checks}")
    msgs = [b"\x01" + i.to_bytes(64, "big") for i in range(min(leaves, 200_000))]
    t0 = time.perf_counter()
    for m in msgs:
        sha256(m).digest()
    ref = (time.perf_counter() - t0) * leaves / len(msgs)
    record(
        "passport.verify",
        {"leaves": leaves, "verify_s": seconds, "ratio_is": "verify / raw sha256 over tree_size nodes"},
        {"raw_sha256_s": ref},
        seconds / ref,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_passport", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    bench_page(max(10, int(2000 * args.scale)))
    bench_verify(max(16, int(1_000_000 * args.scale)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
