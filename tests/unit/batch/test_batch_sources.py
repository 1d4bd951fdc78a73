"""``source_reputation`` added up from per-bucket sums equals the view aggregated over all rows at once."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from batch.views.sources import read_sums, reputation_from_sums, source_sums, sums_path, write_sums

LAG_S = 3_600
T0 = 1_780_000_000_000  # ms

_row = st.fixed_dictionaries(
    {
        "source_id": st.sampled_from(["garage-1", "cc-a", "insurer-9", "cc-b"]),
        "verification": st.sampled_from(["verified", "unverified", "no_anchor"]),
        "batch_flags": st.one_of(
            st.none(), st.lists(st.sampled_from(["odometer_rollback", "x"]), max_size=2)
        ),
        "event_ms": st.integers(0, 10**9),
        # around the timely line, to the millisecond: whole seconds are compared, as Spark casts them
        "lag_ms": st.integers(LAG_S * 1000 - 2_500, LAG_S * 1000 + 2_500) | st.integers(0, 10**8),
        "quality": st.floats(0, 1),
        "bucket": st.integers(0, 5),
    }
)


def _history(rows: list[dict]) -> pa.Table:
    ts = pa.timestamp("ms", tz="UTC")
    return pa.table(
        {
            "source_id": pa.array([r["source_id"] for r in rows], pa.string()),
            "verification": pa.array([r["verification"] for r in rows], pa.string()),
            "batch_flags": pa.array([r["batch_flags"] for r in rows], pa.list_(pa.string())),
            "event_time": pa.array([T0 + r["event_ms"] for r in rows], pa.int64()).cast(ts),
            "ingestion_time": pa.array([T0 + r["event_ms"] + r["lag_ms"] for r in rows], pa.int64()).cast(ts),
            "quality": pa.array([r["quality"] for r in rows], pa.float64()),
        }
    )


def _expected(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Spark's aggregation (batch.views.build.source_reputation), row by row: avg of 0/1 values,
    ``size(NULL) = -1``, ``cast(timestamp as long)`` in whole seconds."""
    out: dict[str, dict[str, float]] = {}
    for source in sorted({r["source_id"] for r in rows}):
        mine = [r for r in rows if r["source_id"] == source]
        n = len(mine)
        timely = [
            (T0 + r["event_ms"] + r["lag_ms"]) // 1000 - (T0 + r["event_ms"]) // 1000 <= LAG_S for r in mine
        ]
        shares = {
            "verified_share": sum(r["verification"] == "verified" for r in mine) / n,
            "consistent_share": sum(r["batch_flags"] is not None and not r["batch_flags"] for r in mine) / n,
            "timely_share": sum(timely) / n,
        }
        out[source] = {
            "events": n,
            **shares,
            "mean_quality": math.fsum(r["quality"] for r in mine) / n,
            "first_ms": T0 + min(r["event_ms"] for r in mine),
            "last_ms": T0 + max(r["event_ms"] for r in mine),
            "reputation": sum(shares.values()) / 3,
        }
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(_row, min_size=1, max_size=60))
def test_the_buckets_sums_add_up_to_the_reputation_of_all_the_rows(rows: list[dict]) -> None:
    buckets = sorted({r["bucket"] for r in rows})
    sums = [source_sums(_history([r for r in rows if r["bucket"] == b]), LAG_S) for b in buckets]
    got = reputation_from_sums(sums).to_pylist()
    want = _expected(rows)
    assert [r["source_id"] for r in got] == list(want)  # one row per producer, sorted
    for r in got:
        w = want[r["source_id"]]
        assert r["events"] == w["events"]
        for share in ("verified_share", "consistent_share", "timely_share", "reputation"):
            assert math.isclose(r[share], w[share], rel_tol=1e-12), share
        assert math.isclose(r["mean_quality"], w["mean_quality"], rel_tol=1e-9, abs_tol=1e-12)
        assert r["first_event_time"].timestamp() * 1000 == w["first_ms"]
        assert r["last_event_time"].timestamp() * 1000 == w["last_ms"]


def test_sums_made_with_another_timely_lag_or_missing_are_not_used(tmp_path: Path) -> None:
    rows = [{"source_id": "cc-a", "verification": "verified", "batch_flags": [], "event_ms": 0,
             "lag_ms": 5_000, "quality": 0.5, "bucket": 0}]  # fmt: skip
    path = sums_path(tmp_path, 0)
    write_sums(source_sums(_history(rows), LAG_S), path, LAG_S)
    back = read_sums([path], LAG_S)
    assert back is not None and back[0].column("events").to_pylist() == [1]
    assert read_sums([path], LAG_S + 1) is None  # the timely share would be another one
    assert read_sums([path, sums_path(tmp_path, 1)], LAG_S) is None
