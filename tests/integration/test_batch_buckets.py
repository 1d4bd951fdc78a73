"""The batch layer over a master dataset in vehicle buckets, on real Spark: no shuffle, incremental runs."""

from __future__ import annotations

import json
import os
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from batch.config import BatchConfig
from batch.incremental import plan_buckets
from batch.jobs import run_batch
from batch.master import read_master, scan_master
from batch.publish import read_current
from batch.reused import REUSED_COLUMNS, find_reused_ids
from batch.simulation import event_row, pseudonym, write_master_dataset
from batch.views.bucket_views import BucketTask
from batch.views.buckets import bucket_pass
from pipelines.dataset import MASTER_SCHEMA, bucket_of, read_layout, write_layout
from speed.master import write_master_files
from tests.fixtures import batch_fleet as fleet

pytestmark = pytest.mark.integration

KEYS = (
    ("vehicle_history", ["event_id"]),
    ("mileage_timeline", ["event_id"]),
    ("fraud_scores", ["vehicle"]),
    ("source_reputation", ["source_id"]),
)


def view(config: BatchConfig, name: str, version: str | None = None) -> pd.DataFrame:
    current = read_current(config)
    assert current is not None
    rel = current.views[name] if version is None else f"versions/{version}/{name}"
    return pd.read_parquet(config.batch_dir / rel)


def assert_same_views(a: BatchConfig, b: BatchConfig) -> None:
    for name, key in KEYS:
        left = view(a, name).sort_values(key).reset_index(drop=True)
        right = view(b, name).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(left, right, check_like=True)


def test_the_speed_layers_bucketed_master_is_read_without_a_shuffle_and_gives_the_same_views(
    spark: Any, tmp_path: Path
) -> None:
    rows = fleet.fleet_rows()
    table = pa.Table.from_pylist(rows, schema=MASTER_SCHEMA)
    bucketed = tmp_path / "bucketed"
    for tmp, final in write_master_files(table, bucketed, "flush-1", {}):  # the speed layer's writer
        os.replace(tmp, final)
    assert read_layout(bucketed) == 64
    write_master_dataset(rows, tmp_path / "dated", number=False)
    by_bucket = BatchConfig(master_dataset=bucketed, batch_dir=tmp_path / "b1", spark_master="local[2]")
    by_date = BatchConfig(
        master_dataset=tmp_path / "dated", batch_dir=tmp_path / "b2", spark_master="local[2]"
    )
    record = run_batch(by_bucket, spark=spark)
    run_batch(by_date, spark=spark)
    assert record.status == "published" and record.audit["success"]
    assert record.buckets["recomputed"] == len(scan_master(bucketed).bucket_files) > 1
    assert_same_views(by_bucket, by_date)
    # the pass's plan: the wide rows are read inside the tasks, nothing is exchanged between them
    scan = scan_master(bucketed)
    tasks = [
        BucketTask(b, [str(f) for f in fs], str(tmp_path / "plan")) for b, fs in scan.bucket_files.items()
    ]
    plan = bucket_pass(spark, tasks)._jdf.queryExecution().executedPlan().toString()
    assert "MapInArrow" in plan and "Exchange" not in plan


def _random_fleet(rng: random.Random, vehicles: int) -> list[dict[str, Any]]:
    rows = []
    for v in range(vehicles):
        vehicle = pseudonym(f"WVWZZZ1JZXR{v:06d}")
        km = rng.randint(1_000, 50_000)
        for n in range(rng.randint(2, 6)):
            km += rng.randint(200, 3_000)
            when = fleet.day(30 * n + rng.randint(0, 20), rng.randint(0, 23))
            source = rng.choice(["garage-net-03", "cc-aurora", "ins-lumen"])
            rows.append(event_row(vehicle, "odometer_reading", when, source, km))
    return rows


def test_an_incremental_run_after_late_events_in_many_buckets_equals_a_full_rebuild(
    spark: Any, tmp_path: Path
) -> None:
    rng = random.Random(17)
    master = tmp_path / "master"
    write_layout(master, 16)
    rows = _random_fleet(rng, 48)
    write_master_dataset(rows, master, segment="seg-1")
    config = BatchConfig(master_dataset=master, batch_dir=tmp_path / "batch", spark_master="local[2]")
    first = run_batch(config, spark=spark)
    assert first.buckets["recomputed"] == len(scan_master(master).bucket_files)

    # late events (some wound back, some earlier than what the car already has) for a few vehicles
    vehicles = sorted({r["vehicle"] for r in rows})
    late_for = rng.sample(vehicles, 8)
    late = []
    for i, vehicle in enumerate(late_for):
        when = fleet.day(rng.randint(0, 200), rng.randint(0, 23))
        km = rng.randint(500, 60_000)
        late.append(
            event_row(vehicle, "odometer_reading", when, "garage-ind-05", km, lag=timedelta(days=30 + i))
        )
    write_master_dataset(late, master, segment="seg-late")
    touched = {
        b for b, fs in scan_master(master).bucket_files.items() if any("seg-late" in f.name for f in fs)
    }

    again = run_batch(config, spark=spark)  # incremental by default
    assert again.status == "published"
    assert again.buckets["partial"] == len(touched) and again.buckets["recomputed"] == 0
    assert again.buckets["carried"] == len(scan_master(master).bucket_files) - len(touched)
    assert again.buckets["vehicles_redone_in_partial"] == len(set(late_for))
    # the audit scanned only the files this run wrote; the reconciliations covered the whole version
    assert again.audit["success"] and again.audit["scanned"]["vehicle_history"] == len(touched)
    audited = json.loads((config.version_dir(again.version) / "_audit.json").read_text())
    assert audited["parameters"]["vehicles"] == len(vehicles)
    reference = BatchConfig(master_dataset=master, batch_dir=tmp_path / "full", spark_master="local[2]")
    run_batch(reference, spark=spark, full=True)
    assert_same_views(config, reference)

    # an untouched bucket's files are the previous version's, shared, not rewritten
    carried = sorted(set(scan_master(master).bucket_files) - touched)[0]
    name = f"bucket-{carried:03d}.parquet"
    old = config.batch_dir / "versions" / first.version / "vehicle_history" / name
    new = config.batch_dir / "versions" / again.version / "vehicle_history" / name
    assert os.stat(old).st_ino == os.stat(new).st_ino

    nothing = run_batch(config, spark=spark)
    assert nothing.status == "up_to_date" and nothing.version == again.version
    # producer sums are carried with their buckets; made under another timely lag, they are not used
    later = event_row(
        late_for[0], "odometer_reading", fleet.day(300), "garage-ind-05", 90_000, lag=timedelta(days=35)
    )
    write_master_dataset([later], master, segment="seg-later")
    lagged = BatchConfig(
        master_dataset=master, batch_dir=config.batch_dir, spark_master="local[2]", timely_lag_s=40 * 86_400
    )
    assert run_batch(lagged, spark=spark).buckets["carried"] > 0
    reference = BatchConfig(
        master_dataset=master,
        batch_dir=tmp_path / "full-2",
        spark_master="local[2]",
        timely_lag_s=40 * 86_400,
    )
    run_batch(reference, spark=spark, full=True)
    assert_same_views(lagged, reference)
    assert (
        view(lagged, "source_reputation").set_index("source_id").loc["garage-ind-05", "timely_share"] == 1.0
    )
    # --full recomputes every bucket whatever changed
    plan = plan_buckets(scan_master(master), read_current(config), config.batch_dir, full=True, since=None)
    assert plan.carried == [] and len(plan.whole) == len(scan_master(master).bucket_files)


SEASON = (0.5, 0.5, 0.8, 1.1, 1.4, 1.6, 1.7, 1.5, 1.1, 0.8, 0.5, 0.5)  # the fleet drives in summer


def _seasonal_fleet(
    rng: random.Random, vehicles: int, season: tuple[float, ...], tag: str
) -> list[dict[str, Any]]:
    """Cars read about weekly for 14 months, each at its own rate, all following ``season``."""
    rows = []
    for v in range(vehicles):
        vehicle = pseudonym(f"WVWZZZ1JZ{tag}{v:06d}")
        rate, km, n = rng.uniform(20, 70), rng.uniform(5_000, 80_000), 0
        while n < 420:
            step = rng.randint(5, 9)
            km += sum(rate * season[fleet.day(n + d).month - 1] for d in range(step))
            n += step
            rows.append(event_row(vehicle, "odometer_reading", fleet.day(n, 10), "cc-aurora", round(km)))
    return rows


def test_every_car_is_judged_against_the_whole_fleets_seasons_in_either_layout_and_run(
    spark: Any, tmp_path: Path
) -> None:
    """A car that slows each winter as the whole fleet does is not clocking; whichever layout the
    master has, and however the run went (full, incremental, seasons moved), the verdicts agree."""
    rng = random.Random(5)
    rows = _seasonal_fleet(rng, 40, SEASON, "S")
    master = tmp_path / "master"
    write_layout(master, 16)
    write_master_dataset(rows, master, segment="seg-1")
    write_master_dataset(rows, tmp_path / "dated", number=False)
    config = BatchConfig(master_dataset=master, batch_dir=tmp_path / "batch", spark_master="local[2]")
    dated = BatchConfig(master_dataset=tmp_path / "dated", batch_dir=tmp_path / "b2", spark_master="local[2]")
    run_batch(config, spark=spark)
    run_batch(dated, spark=spark)
    profile = read_current(config).fleet_profile  # type: ignore[union-attr]
    assert profile == read_current(dated).fleet_profile  # type: ignore[union-attr]
    assert profile[6] > 1.3 and profile[0] < 0.7  # July against January, as the fleet drove
    flagged = view(config, "fraud_scores")
    assert not any("gradual_clocking" in f for f in flagged["flags"]), "seasons taken for clocking"
    assert_same_views(config, dated)

    # cars of the other hemisphere join, in several buckets: the fleet's seasons move past the
    # tolerance (batch.profile_tolerance), every car is redone
    newcomers = _seasonal_fleet(rng, 12, SEASON[6:] + SEASON[:6], "N")  # southern hemisphere
    write_master_dataset(newcomers, master, segment="seg-2")
    again = run_batch(config, spark=spark)
    assert again.buckets["profile_moved"] == 1 and again.buckets["carried"] == 0
    assert again.buckets["recomputed"] == len(scan_master(master).bucket_files)
    assert read_current(config).fleet_profile != profile  # type: ignore[union-attr]
    reference = BatchConfig(master_dataset=master, batch_dir=tmp_path / "full", spark_master="local[2]")
    run_batch(reference, spark=spark, full=True)
    assert read_current(reference).fleet_profile == read_current(config).fleet_profile  # type: ignore[union-attr]
    assert_same_views(config, reference)

    # a few late readings nudge the measured seasons, within the tolerance: the version's profile stays
    # the reference, only the cars with new readings are redone, the rest is carried over
    late = []
    for i, row in enumerate(rows[:: len(rows) // 3][:3]):
        later = row["event_time"] + timedelta(days=430 + i)
        late.append(event_row(row["vehicle"], "odometer_reading", later, "cc-aurora", 200_000 + i))
    write_master_dataset(late, master, segment="seg-3")
    nudged = run_batch(config, spark=spark)
    assert nudged.buckets["profile_moved"] == 0 and nudged.buckets["recomputed"] == 0
    assert 0 < nudged.buckets["partial"] <= 3 and nudged.buckets["carried"] > 0
    assert read_current(config).fleet_profile == read_current(reference).fleet_profile  # type: ignore[union-attr]


def test_a_mistyped_reading_beyond_the_plausible_range_is_tolerated_as_an_outlier_not_a_failed_audit(
    spark: Any, tmp_path: Path
) -> None:
    # a car at about 1.08M km whose owner typed 9 for the first digit (the simulator's seed 7 has one)
    car = pseudonym("WDDU194Y3J0000729")
    rows = [
        event_row(car, "odometer_reading", fleet.day(20 * n), "garage-net-04", 1_060_000 + 6_000 * n)
        for n in range(8)
    ]
    rows.append(event_row(car, "odometer_reading", fleet.day(70, 20), "manual-portal", 9_084_399))
    master = tmp_path / "master"
    write_layout(master, 4)
    write_master_dataset(rows, master, segment="seg-1")
    config = BatchConfig(master_dataset=master, batch_dir=tmp_path / "batch", spark_master="local[2]")
    record = run_batch(config, spark=spark)
    assert record.status == "published" and record.audit["success"]
    assert len(record.audit["tolerated"]) == 1
    assert record.audit["tolerated"][0].startswith("mileage_timeline: 1 odometer_km outside [0, 3000000]")
    mileage = view(config, "mileage_timeline").set_index("odometer_km")
    assert bool(mileage.loc[9_084_399, "is_outlier"]) and mileage.loc[9_084_399, "outlier_reason"]
    assert mileage["reconciled_km"].max() <= 3_000_000


def _fleet_with_a_reused_id() -> tuple[list[dict[str, Any]], dict[str, Any], str, str]:
    """The hand fleet plus one row that takes a car's event id for a car of another bucket, a month
    later: (rows, the original row, the car that keeps the id, the other car)."""
    rows = fleet.fleet_rows()
    by_bucket = sorted({r["vehicle"] for r in rows}, key=lambda v: bucket_of(v, 64))
    first, other = by_bucket[0], by_bucket[-1]
    assert bucket_of(first, 64) != bucket_of(other, 64)
    original = next(r for r in rows if r["vehicle"] == first and r["odometer_km"] is not None)
    reused = {
        **original,
        "vehicle": other,
        "processed_time": original["processed_time"] + timedelta(days=30),
        "offset": original["offset"] + 100_000,
        "odometer_km": 1,  # what the copy claims for the other car: it must not count anywhere
    }
    return [*rows, reused], original, first, other


def _write_bucketed(rows: list[dict[str, Any]], root: Path) -> None:
    table = pa.Table.from_pylist(rows, schema=MASTER_SCHEMA)
    for tmp, final in write_master_files(table, root, "flush-1", {}):  # the speed layer's writer
        os.replace(tmp, final)


def test_ids_that_share_a_hash_are_told_apart(spark: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """The search groups ids by a 64-bit hash first: with every id given the same hash, only the id
    really carried by two cars is found."""
    from pyspark.sql import functions as F

    rows, original, first, other = _fleet_with_a_reused_id()
    _write_bucketed(rows, tmp_path / "master")
    real = F.xxhash64
    monkeypatch.setattr(F, "xxhash64", lambda col: real(col) if col == "vehicle" else F.lit(7).cast("long"))
    found = find_reused_ids(read_master(spark, scan_master(tmp_path / "master")).select(*REUSED_COLUMNS))
    assert found.kept == {original["event_id"]: first}
    assert found.rows == {(original["event_id"], other): 1}


def test_a_producer_reusing_another_cars_event_id_cannot_stop_the_batch_layer_from_publishing(
    spark: Any, tmp_path: Path
) -> None:
    """Past the speed layer's dedupe window a member can send an id again, for another car: the first
    car keeps it, the copy is left out of the views and named in the run record, the run publishes."""
    rows, original, first, other = _fleet_with_a_reused_id()
    bucketed, dated = tmp_path / "bucketed", tmp_path / "dated"
    _write_bucketed(rows, bucketed)
    write_master_dataset(rows, dated, number=False)
    configs = [
        BatchConfig(master_dataset=root, batch_dir=tmp_path / f"batch-{root.name}", spark_master="local[2]")
        for root in (bucketed, dated)
    ]
    for config in configs:
        record = run_batch(config, spark=spark)
        assert record.status == "published" and record.audit["success"], record.error
        assert record.set_aside == [
            {
                "event_id": original["event_id"],
                "vehicle": other,
                "kept_by": first,
                "rows": 1,
                "reason": "event id of another vehicle",
            }
        ]
        history = view(config, "vehicle_history")
        holders = history.loc[history["event_id"] == original["event_id"], "vehicle"].tolist()
        assert holders == [first]
        assert 1 not in view(config, "mileage_timeline")["odometer_km"].tolist()
        replays = int(view(config, "fraud_scores")["duplicates"].sum())  # the fleet holds one replay
        assert replays == 1 and history.shape[0] == len(rows) - 1 - replays
    assert_same_views(*configs)


def test_the_audit_counts_keys_file_by_file_and_exactly_what_the_files_cannot_vouch_for(
    spark: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    import shutil

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    import batch.audit as audit
    from batch.config import VIEWS

    config = fleet.bucketed_config(tmp_path)
    record = run_batch(config, spark=spark)
    version_dir = config.version_dir(record.version)
    params = json.loads((version_dir / "_audit.json").read_text())["parameters"]
    merged: list[Any] = []
    real = audit.merge
    monkeypatch.setattr(audit, "merge", lambda parts, keys: merged.append(real(parts, keys)) or merged[-1])
    paths = {v: version_dir / v for v in VIEWS}
    good = audit.audit_views(paths, params, tmp_path / "good", spark, vehicle_files=True)
    assert good.success and len(merged) == 3  # history, timeline, scores: each vouched for by its files
    assert all(None not in m.repeats.values() for m in merged)

    # one history row copied into another bucket's file, under a vehicle of that file: no file holds
    # a repeat, and the vehicle ranges stay disjoint; only the event ids across files tell
    history = tmp_path / "tampered" / "vehicle_history"
    shutil.copytree(version_dir / "vehicle_history", history)
    first, second = sorted(history.glob("*.parquet"))[:2]
    source, target = pq.read_table(first), pq.read_table(second)
    copy = source.slice(0, 1)
    copy = copy.set_column(copy.schema.get_field_index("vehicle"), "vehicle", target["vehicle"].slice(0, 1))
    seq = pc.max(target["seq"]).as_py() + 1
    copy = copy.set_column(
        copy.schema.get_field_index("seq"), "seq", pa.array([seq], copy.schema.field("seq").type)
    )
    pq.write_table(
        pa.concat_tables([target, copy.cast(target.schema)]).sort_by(
            [("vehicle", "ascending"), ("seq", "ascending")]
        ),
        second,
    )
    merged.clear()
    bad = audit.audit_views(
        {**paths, "vehicle_history": history}, params, tmp_path / "bad", spark, vehicle_files=True
    )
    assert merged[0].repeats[("event_id",)] is None  # equal digests in two files: counted exactly
    assert any(
        f.startswith("vehicle_history: expect_column_values_to_be_unique event_id") for f in bad.failures
    )
    assert not bad.success
