"""The batch job on real Spark: hand-checked views, write-audit-publish, idempotent re-runs, quarantine."""

from __future__ import annotations

import json
import shutil
from itertools import pairwise
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.config import BatchConfig
from batch.errors import AuditFailedError
from batch.jobs import run_batch
from batch.publish import read_current
from batch.runs import read_runs
from batch.simulation import event_row, write_master_dataset
from tests.fixtures import batch_fleet as fleet

pytestmark = pytest.mark.integration


def view(config: BatchConfig, name: str, version: str | None = None) -> pd.DataFrame:
    current = read_current(config)
    assert current is not None
    rel = current.views[name] if version is None else f"versions/{version}/{name}"
    return pd.read_parquet(config.batch_dir / rel)


@pytest.fixture(scope="module")
def published(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[BatchConfig, Any]:
    root = tmp_path_factory.mktemp("batch")
    fleet.write_fleet(root / "master")
    config = BatchConfig(master_dataset=root / "master", batch_dir=root / "batch", spark_master="local[2]")
    stages: list[str] = []
    record = run_batch(config, spark=spark, progress=lambda s, i, n: stages.append(s))
    return config, (record, stages)


def test_a_run_publishes_every_view_with_its_watermark(published: tuple[BatchConfig, Any]) -> None:
    config, (record, stages) = published
    current = read_current(config)
    assert record.status == "published" and current is not None and current.version == record.version
    assert stages[0] == "scan master dataset" and stages[-1] == "publish"
    rows = fleet.fleet_rows()
    assert (
        current.watermark.processed_time
        == max(r["processed_time"] for r in rows).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    )
    assert current.watermark.events == len(rows)
    assert record.audit["success"] and record.audit["checked"] > 40
    assert Path(record.audit["docs"]).exists()  # GX data docs kept per run
    for name, rel in current.views.items():
        assert rel == f"versions/{record.version}/{name}"


def test_fraud_scores_match_the_hand_checked_fleet(published: tuple[BatchConfig, Any]) -> None:
    config, _ = published
    scores = view(config, "fraud_scores").set_index("vehicle")
    assert sorted(scores.index) == sorted(fleet.VEHICLES)
    assert scores.loc[fleet.CLEAN, "label"] == "clean" and scores.loc[fleet.CLEAN, "score"] == 0.0
    assert scores.loc[fleet.REPLAYED, "label"] == "clean" and scores.loc[fleet.REPLAYED, "duplicates"] == 1
    rb = scores.loc[fleet.ROLLBACK]
    assert rb["label"] == "fraudulent" and rb["score"] == pytest.approx(1 - 0.2 * 0.6)
    assert list(rb["flags"]) == ["odometer_rollback", "rollback_before_sale"]
    wreck = scores.loc[fleet.WRECK]
    # the wreck's flags and score are the rules' (being tuned): check what the wreck itself implies
    assert "activity_after_wreck" in list(wreck["flags"]) and wreck["label"] == "fraudulent"
    history = view(config, "vehicle_history")
    after = history[(history.vehicle == fleet.WRECK) & (history.seq > 5)]
    evidence = {r["flag"]: list(r["evidence"]) for r in wreck["reasons"]}
    assert sorted(evidence["activity_after_wreck"]) == sorted(after.event_id)
    typo = scores.loc[fleet.TYPO]
    assert list(typo["flags"]) == ["implausible_rate"] and typo["label"] == "clean"


def test_vehicle_history_is_every_event_in_order(published: tuple[BatchConfig, Any]) -> None:
    config, _ = published
    history = view(config, "vehicle_history")
    rows = fleet.fleet_rows()
    assert len(history) == len({r["event_id"] for r in rows}) == len(rows) - 1
    for _vehicle, events in history.groupby("vehicle"):
        assert list(events.seq) == list(range(1, len(events) + 1))
        assert events.event_time.is_monotonic_increasing
    # range-partitioned on the vehicle and sorted: a vehicle is in one file, files do not overlap
    current = read_current(config)
    ranges = []
    for file in sorted((config.batch_dir / current.views["vehicle_history"]).glob("*.parquet")):
        part = pq.read_table(file, columns=["vehicle", "seq"]).to_pandas()
        assert list(part.itertuples(index=False)) == sorted(part.itertuples(index=False))
        ranges.append((part.vehicle.iloc[0], part.vehicle.iloc[-1]))
    ranges.sort()
    assert all(a[1] < b[0] for a, b in pairwise(ranges)) and len(ranges) > 1
    sale = history[(history.vehicle == fleet.ROLLBACK) & (history.event_type == "ownership_change")]
    assert list(sale.batch_flags.item()) == ["rollback_before_sale"]
    assert json.loads(sale.flag_evidence.item())["rollback_before_sale"]["drop_km"] == 39_000
    timeline = view(config, "mileage_timeline")
    typo = timeline[(timeline.vehicle == fleet.TYPO) & timeline.is_outlier]
    assert list(typo.odometer_km) == [120_500] and "above the later reading" in typo.outlier_reason.item()
    reputation = view(config, "source_reputation").set_index("source_id")
    assert reputation.events.sum() == len(history)
    assert reputation.loc["garage-ind-12", "consistent_share"] == 0.0
    assert reputation.loc["cc-aurora", "reputation"] == 1.0


def test_rerunning_the_same_input_gives_the_same_views(
    spark: Any, published: tuple[BatchConfig, Any]
) -> None:
    config, (first, _) = published
    again = run_batch(config, spark=spark)
    assert again.status == "up_to_date" and again.version == first.version
    rebuilt = run_batch(config, spark=spark, full=True)
    assert rebuilt.status == "published" and rebuilt.version != first.version
    for name, key in (
        ("vehicle_history", ["event_id"]),
        ("fraud_scores", ["vehicle"]),
        ("source_reputation", ["source_id"]),
    ):
        a = view(config, name, first.version).sort_values(key).reset_index(drop=True)
        b = view(config, name, rebuilt.version).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)


def test_the_audit_blocks_wrong_data_and_bad_files_are_quarantined(
    spark: Any, published: tuple[BatchConfig, Any], tmp_path: Path
) -> None:
    config, _ = published
    before = read_current(config)
    master = tmp_path / "master"
    shutil.copytree(config.master_dataset, master)
    bad = event_row(fleet.CLEAN, "odometer_reading", fleet.day(400), "cc-aurora", 17_000, quality=1.7)
    write_master_dataset([bad], master, segment="seg-bad")
    (master / "event_date=2025-01-01" / "truncated.parquet").write_bytes(b"PAR1\x00\x01")
    pq.write_table(pa.table({"event_id": ["x"]}), master / "event_date=2025-01-01" / "old-schema.parquet")
    wrong = BatchConfig(master_dataset=master, batch_dir=config.batch_dir, spark_master="local[2]")
    with pytest.raises(
        AuditFailedError, match=r"vehicle_history: expect_column_values_to_be_between quality"
    ) as err:
        run_batch(wrong, spark=spark)
    assert read_current(config).version == before.version  # the previous version stays published
    last = read_runs(config, limit=1)[0]
    assert last["status"] == "audit_failed" and not last["published"]
    assert {q["file"] for q in last["quarantined"]} == {
        "event_date=2025-01-01/truncated.parquet",
        "event_date=2025-01-01/old-schema.parquet",
    }
    assert last["rows_in"] == len(fleet.fleet_rows()) + 1  # the run went on over the readable files
    assert all("quality" in f for f in err.value.failures)


def test_the_audit_passes_the_published_views_and_blocks_a_wrong_score(
    spark: Any, published: tuple[BatchConfig, Any], tmp_path: Path
) -> None:
    from batch.audit import audit_views
    from batch.config import VIEWS

    config, (record, _) = published
    version_dir = config.version_dir(record.version)
    params = json.loads((version_dir / "_audit.json").read_text())["parameters"]
    good = audit_views({v: version_dir / v for v in VIEWS}, params, tmp_path / "good", spark)
    assert good.success and good.checked == record.audit["checked"]

    wrong = {v: version_dir / v for v in VIEWS}
    scores = pq.read_table(sorted((version_dir / "fraud_scores").glob("*.parquet")))
    tampered = scores.set_column(
        scores.schema.get_field_index("score"), "score", pa.array([1.5] + [0.0] * (scores.num_rows - 1))
    )
    (tmp_path / "fraud_scores").mkdir()
    pq.write_table(tampered, tmp_path / "fraud_scores" / "part-0.parquet")
    wrong["fraud_scores"] = tmp_path / "fraud_scores"
    bad = audit_views(wrong, params, tmp_path / "bad", spark)
    assert not bad.success
    assert [f.split(" {")[0] for f in bad.failures] == [
        "fraud_scores: expect_column_values_to_be_between score"
    ]


def test_a_since_run_redoes_the_touched_vehicles_and_equals_a_full_rebuild(
    spark: Any, tmp_path: Path
) -> None:
    master = tmp_path / "master"
    fleet.write_fleet(master)
    config = BatchConfig(master_dataset=master, batch_dir=tmp_path / "batch", spark_master="local[2]")
    first = run_batch(config, spark=spark)
    # a late reading of the clean car, wound back, arrives after the first run
    late = event_row(fleet.CLEAN, "odometer_reading", fleet.day(400), "garage-ind-05", 2_000)
    write_master_dataset([late], master, segment="seg-late")

    incremental = run_batch(config, spark=spark, since=late["processed_time"])
    assert incremental.status == "published" and incremental.version != first.version
    assert incremental.rows_in == len(fleet.fleet_rows()) + 1
    reference = BatchConfig(master_dataset=master, batch_dir=tmp_path / "full", spark_master="local[2]")
    run_batch(reference, spark=spark, full=True)
    for name, key in (
        ("vehicle_history", ["event_id"]),
        ("mileage_timeline", ["event_id"]),
        ("fraud_scores", ["vehicle"]),
        ("source_reputation", ["source_id"]),
    ):
        a = view(config, name).sort_values(key).reset_index(drop=True)
        b = view(reference, name).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, check_like=True)
    scores = view(config, "fraud_scores").set_index("vehicle")
    assert "odometer_rollback" in list(scores.loc[fleet.CLEAN, "flags"])
    # the untouched vehicles' rows are the first version's, carried over
    before = view(config, "fraud_scores", first.version).set_index("vehicle")
    assert scores.loc[fleet.ROLLBACK, "score"] == before.loc[fleet.ROLLBACK, "score"]
