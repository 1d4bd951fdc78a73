"""Event contract hot path: ``python -m bench.bench_events [--scale F]``.

Measured on one core, each against a same-run reference:

* ``events.parse``: :func:`parse_event` on a typical envelope as the producer
  SDK sends it (orjson's bytes: the compiled path) vs plain ``json.loads`` on
  the same bytes (issue 16's target: parse + validate <= 10 us).
* ``events.parse_strict``: the same envelope as another writer lays it out
  (``json.dumps``, spaces after separators: the strict parser decides) vs
  plain ``json.loads`` on those bytes.
* ``events.validate``: :func:`validate_envelope` (compiled fast check +
  extra checks) vs the ``jsonschema`` validator alone on the same envelope.
* ``events.proofs``: :func:`pipelines.merkle.verify_inclusions` over the
  events of one 1,024-event checkpoint (a poll) vs :func:`verify_inclusion`
  on each, the same claims.
* ``vault.pseudonymize``: :meth:`IdentityVault.pseudonymize_vehicle` with the
  in-memory LRU (a producer's steady state) vs the same vault without cache
  (one SQLite lookup per event).
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from bench.common import record
from pipelines import merkle
from pipelines.events import new_event_id, parse_event, validate_envelope
from pipelines.events.validation import _validator
from pipelines.vault import IdentityVault
from pipelines.vin import with_check_digit

TARGET = 100_000


def _rate(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):  # shared machine: keep the quietest pass
        started = time.perf_counter()
        for _i in range(n):
            fn()
        best = min(best, time.perf_counter() - started)
    return n / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_events", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n = max(1000, int(TARGET * args.scale))

    event = {
        "event_id": new_event_id(),
        "event_type": "maintenance",
        "schema_version": 1,
        "source_id": "garage-net-03",
        "vehicle": "v-3f9a0c4d2b1e8f7a6c5d4e3f2a1b0c9d",
        "event_time": "2026-03-01T08:15:00.000Z",
        "ingestion_time": "2026-03-01T08:15:02.120Z",
        "payload": {
            "odometer_km": 41235,
            "service_type": "oil_change",
            "in_network": True,
            "items": ["oil", "filter"],
            "cost_cents": 18950,
            "location": {"lat": 48.8566, "lon": 2.3522},
        },
        "proof": {
            "log_index": 4711,
            "tree_size": 5120,
            "root": "a" * 64,
            "path": ["b" * 64] * 13,
            "leaf": "c" * 64,
        },
    }
    raw = orjson.dumps(event)
    spaced = json.dumps(event).encode()

    for name, data in (("events.parse", raw), ("events.parse_strict", spaced)):
        parse = _rate(functools.partial(parse_event, data), n)
        plain = _rate(functools.partial(json.loads, data), n)
        record(
            name,
            {"events_per_s": parse, "us_per_event": round(1e6 / parse, 2), "bytes": len(data),
             "ratio_is": "parse_event rate / json.loads rate"},
            {"json_loads_per_s": plain},
            parse / plain,
        )  # fmt: skip

    leaves = [merkle.hash_leaf(b"event %d" % i) for i in range(5120)]
    top = merkle.root(leaves)
    claims = [(leaves[i], i, 5120, merkle.inclusion_proof(leaves, i), top) for i in range(4096, 5120)]
    rounds = max(3, n // 5000)
    batch = _rate(lambda: merkle.verify_inclusions(claims), rounds) * len(claims)
    single = _rate(lambda: [merkle.verify_inclusion(*c) for c in claims], rounds) * len(claims)
    record(
        "events.proofs",
        {
            "us_per_event": 1e6 / batch,
            "events": len(claims),
            "ratio_is": "per-batch rate / single-proof rate",
        },
        {"single_us_per_event": 1e6 / single},
        batch / single,
    )

    assert validate_envelope(event) == []
    fast = _rate(lambda: validate_envelope(event), n)
    authority = _validator("envelope", 1).validator  # the full schema with its payload dispatch
    slow = _rate(lambda: authority.is_valid(event), max(1000, n // 20))
    compiled_check = _validator("envelope", 1, core=True).accepts
    from pipelines.events.fastcheck import compile_python_check
    from pipelines.events.registry import load_schema

    core_schema = load_schema("envelope", 1)
    core_schema.pop("allOf")
    closures = compile_python_check(core_schema)
    assert closures is not None and compiled_check is not None
    compiled_rate = _rate(lambda: compiled_check(event), n)
    closures_rate = _rate(lambda: closures(event), n)
    record(
        "events.validate_compiled",
        {
            "us_per_envelope": 1e6 / compiled_rate,
            "ratio_is": "msgspec envelope check rate / Python-closure check rate",
        },
        {"closures_us_per_envelope": 1e6 / closures_rate},
        compiled_rate / closures_rate,
    )
    record(
        "events.validate",
        {"events_per_s": fast, "ratio_is": "validate_envelope rate / jsonschema-only rate"},
        {"jsonschema_per_s": slow},
        fast / slow,
    )

    vins = [with_check_digit(f"1HGCM82603A{i:06d}") for i in range(1000)]
    with tempfile.TemporaryDirectory() as tmp:
        cached = IdentityVault(Path(tmp) / "identity.sqlite")
        uncached = IdentityVault(Path(tmp) / "identity.sqlite", cache_size=0)
        for v in vins:
            cached.pseudonymize_vehicle(v)
        it = iter(range(10**12))
        hot = _rate(lambda: cached.pseudonymize_vehicle(vins[next(it) % 1000]), n)
        cold = _rate(lambda: uncached.pseudonymize_vehicle(vins[next(it) % 1000]), max(1000, n // 10))
        cached.close()
        uncached.close()
    record(
        "vault.pseudonymize",
        {"events_per_s": hot, "distinct_vins": len(vins), "ratio_is": "LRU rate / SQLite-lookup rate"},
        {"sqlite_lookup_per_s": cold},
        hot / cold,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
