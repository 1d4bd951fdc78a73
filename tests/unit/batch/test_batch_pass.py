"""The batch layer's pieces that need no Spark: the per-vehicle pass, reconciliation, scan, publish, runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.config import BatchConfig
from batch.errors import MasterDatasetError, RunInProgressError
from batch.evaluate import evaluate
from batch.master import scan_master
from batch.publish import manifest, publish, read_current
from batch.rules import load_engine
from batch.runs import RunRecord, append_run, read_runs, run_lock
from batch.scheduler import next_times, run_schedule
from batch.simulation import write_master_dataset
from batch.views.annotate import annotate_batches, annotate_table, annotate_vehicle
from batch.views.mileage import heaviest_monotone_chain, reconcile
from pipelines.dataset import MASTER_SCHEMA
from pipelines.errors import PccValueError
from tests.fixtures import batch_fleet as fleet


def _vehicle_frame(vehicle: str) -> pd.DataFrame:
    rows = [r for r in fleet.fleet_rows() if r["vehicle"] == vehicle]
    table = pa.Table.from_pylist(rows, schema=MASTER_SCHEMA)
    return table.to_pandas()[::-1].reset_index(drop=True)  # any order in


def test_rollback_before_sale_is_flagged_on_the_rollback_and_the_sale() -> None:
    out = annotate_vehicle(_vehicle_frame(fleet.ROLLBACK), load_engine())
    by_type = {t: list(f) for t, f in zip(out["event_type"], out["batch_flags"], strict=True)}
    assert by_type["maintenance"] == ["odometer_rollback"]  # 60,000 -> 21,000 km
    assert by_type["ownership_change"] == ["rollback_before_sale"]  # 10 days later
    last = out.iloc[-1]
    assert last["v_label"] == "fraudulent"
    assert last["v_score"] == pytest.approx(1 - (1 - 0.8) * (1 - 0.4))
    reasons = {r["flag"]: r["evidence"] for r in json.loads(last["v_reasons"])}
    rollback_id = out.loc[out["event_type"] == "maintenance", "event_id"].item()
    assert rollback_id in reasons["rollback_before_sale"] and rollback_id in reasons["odometer_rollback"]
    assert list(out["seq"]) == list(range(1, len(out) + 1))
    assert out["event_time"].is_monotonic_increasing


def test_the_clean_car_gets_no_flag_and_no_outlier() -> None:
    out = annotate_vehicle(_vehicle_frame(fleet.CLEAN), load_engine())
    assert all(len(f) == 0 for f in out["batch_flags"])
    assert out.iloc[-1]["v_label"] == "clean" and out.iloc[-1]["v_score"] == 0.0
    assert not out["is_outlier"].any()
    assert (out["reconciled_km"] == out["odometer_km"]).all()


def test_a_stored_replay_is_dropped_and_counted() -> None:
    frame = _vehicle_frame(fleet.REPLAYED)
    out = annotate_vehicle(frame, load_engine())
    assert len(frame) == 4 and len(out) == 3 and out["event_id"].is_unique
    assert out.iloc[-1]["v_duplicates"] == 1


def test_a_typo_is_an_outlier_explained_by_the_reading_it_contradicts() -> None:
    out = annotate_vehicle(_vehicle_frame(fleet.TYPO), load_engine())
    typo = out[out["odometer_km"] == 120_500].iloc[0]
    assert bool(typo["is_outlier"]) and "above the later reading of 12600 km" in typo["outlier_reason"]
    assert 11_500 < typo["reconciled_km"] < 12_600
    assert out[out["odometer_km"] != 120_500]["is_outlier"].sum() == 0


def test_heaviest_chain_prefers_the_weightier_readings() -> None:
    # three honest readings outweigh two high manual ones
    assert heaviest_monotone_chain([10, 90, 95, 20, 30], [1, 0.2, 0.2, 1, 1]) == [0, 3, 4]
    r = reconcile([0, 10, 20], [100, 50, 200], [1, 0.1, 1], ["a", "b", "c"])
    assert r.outlier_reason[1] == "below the earlier reading of 100 km (event a)"
    assert r.reconciled_km == [100, 150, 200]


def test_scan_quarantines_corrupt_and_drifted_files(tmp_path: Path) -> None:
    write_master_dataset(fleet.fleet_rows(), tmp_path)
    good = scan_master(tmp_path)
    day = tmp_path / "event_date=2025-01-01"
    (day / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    drifted = pa.table({"event_id": ["x"], "odometer": [1.5]})
    pq.write_table(drifted, day / "drifted.parquet")
    (day / ".inflight.parquet.tmp").write_bytes(b"being written")
    scan = scan_master(tmp_path)
    reasons = {q.file: q.reason for q in scan.quarantined}
    assert set(reasons) == {"event_date=2025-01-01/broken.parquet", "event_date=2025-01-01/drifted.parquet"}
    assert reasons["event_date=2025-01-01/broken.parquet"].startswith("unreadable Parquet")
    assert "missing column vehicle" in reasons["event_date=2025-01-01/drifted.parquet"]
    assert "unexpected columns odometer" in reasons["event_date=2025-01-01/drifted.parquet"]
    assert scan.rows == good.rows and scan.fingerprint == good.fingerprint


def test_scan_of_a_missing_dataset_names_it(tmp_path: Path) -> None:
    with pytest.raises(MasterDatasetError, match="does not exist"):
        scan_master(tmp_path / "nope")


def test_publish_swaps_the_manifest_and_refuses_missing_views(tmp_path: Path) -> None:
    config = BatchConfig(master_dataset=tmp_path / "m", batch_dir=tmp_path / "b")
    assert read_current(config) is None
    doc = manifest("v1", {"processed_time": "2025-01-01T00:00:00.000Z", "event_time": None, "events": 1})
    with pytest.raises(Exception, match="view vehicle_history is missing"):
        publish(config, doc)
    for rel in doc.views.values():
        (config.batch_dir / rel).mkdir(parents=True)
    publish(config, doc)
    assert read_current(config).version == "v1"  # type: ignore[union-attr]
    assert [p.name for p in config.batch_dir.iterdir() if p.is_file()] == ["CURRENT.json"]  # no temp left


def test_run_history_and_lock(tmp_path: Path) -> None:
    config = BatchConfig(master_dataset=tmp_path / "m", batch_dir=tmp_path / "b")
    append_run(config, RunRecord(run_id="a", version="a", started="s", status="published", rows_in=3))
    append_run(config, RunRecord(run_id="b", version="b", started="s", status="audit_failed"))
    assert [r["status"] for r in read_runs(config)] == ["published", "audit_failed"]
    assert read_runs(config, limit=1)[0]["version"] == "b"
    with run_lock(config), pytest.raises(RunInProgressError), run_lock(config):
        pass


def test_evaluate_counts_per_kind_and_clean_false_positives() -> None:
    scores = {
        "v1": ("fraudulent", {"rollback_before_sale", "odometer_rollback"}),
        "v2": ("suspicious", {"rollback_before_sale"}),  # not a fraud: false positive
        "v3": ("clean", {"implausible_rate"}),  # a typo, labelled clean
        "v4": ("clean", set()),  # missed clocking
    }
    truth = {"v1": {"rollback_before_sale"}, "v4": {"gradual_clocking"}}
    result = evaluate(scores, truth)
    kinds = {k.kind: k for k in result.kinds}
    assert (kinds["rollback_before_sale"].tp, kinds["rollback_before_sale"].fp) == (1, 1)
    assert kinds["rollback_before_sale"].precision == 0.5 and kinds["rollback_before_sale"].recall == 1.0
    assert kinds["gradual_clocking"].recall == 0.0 and kinds["gradual_clocking"].fn == 1
    assert (result.clean_vehicles, result.clean_false_positives) == (2, 1)


def test_scheduler_runs_at_each_tick_and_survives_a_failed_run() -> None:
    clock = [datetime(2026, 1, 1, 10, 0, 30, tzinfo=UTC)]
    calls: list[datetime] = []

    def run() -> RunRecord:
        calls.append(clock[0])
        if len(calls) == 1:
            raise PccValueError("bad input")
        return RunRecord(run_id="x", version="x", started="", status="published", duration_s=1.0)

    def sleep(s: float) -> None:
        clock[0] += timedelta(seconds=s)

    events: list[str] = []
    done = run_schedule(
        BatchConfig(master_dataset=Path("m"), batch_dir=Path("b")), "*/5 * * * *", run, events.append, 2, sleep, lambda: clock[0]
    )
    assert done == 2
    assert [c.minute for c in calls] == [5, 10]
    assert any("run failed: bad input" in e for e in events)
    with pytest.raises(PccValueError, match="invalid cron"):
        next_times("every hour", clock[0])


def test_batches_cut_mid_vehicle_give_the_same_rows_as_whole_vehicles() -> None:
    table = pa.Table.from_pylist(fleet.fleet_rows(), schema=MASTER_SCHEMA)
    table = table.sort_by("vehicle")  # the pass gets partitions sorted by vehicle
    engine = load_engine()
    whole = annotate_table(table, engine)
    # tiny batches and chunks: most vehicles straddle a batch boundary
    streamed = pa.Table.from_batches(
        list(annotate_batches(table.to_batches(max_chunksize=3), engine, chunk_rows=4))
    )
    assert streamed.num_rows == whole.num_rows == table.num_rows - 1  # the stored replay is dropped
    assert streamed.to_pylist() == whole.to_pylist()
    assert streamed["vehicle"].to_pylist() == sorted(streamed["vehicle"].to_pylist())
    last = [r for r in streamed.to_pylist() if r["v_label"] is not None]
    assert sorted(r["vehicle"] for r in last) == sorted(fleet.VEHICLES)  # one verdict per vehicle


def test_evaluate_per_variant_over_detectable_cases_beside_the_naive_check() -> None:
    from pipelines.simulator.evaluation import Case

    hidden = Case("rollback_before_sale", (("history", "none"),), False)
    shown = Case("rollback_before_sale", (("history", "on_record"),), True)
    clone = Case("cloned_identity", (("connected", "no"),), True)
    scores = {
        "v1": ("fraudulent", {"rollback_before_sale"}),
        "v2": ("clean", set()),  # the wind-back predates every reading: nothing to see
        "v3": ("fraudulent", {"interleaved_odometers"}),
        "v4": ("clean", set()),
    }
    truth = {"v1": [shown], "v2": [hidden], "v3": [clone], "v4": []}
    naive = {"v1": True, "v2": False, "v3": True, "v4": True}  # the naive check flags a clean car too
    result = evaluate(scores, truth, naive)
    kinds = {k.kind: k for k in result.kinds}
    rollback = kinds["rollback_before_sale"]
    assert (rollback.recall, rollback.detectable, rollback.detectable_recall) == (0.5, 1, 1.0)
    assert rollback.naive_recall == 0.5 and kinds["cloned_identity"].recall == 1.0
    rows = {(r["kind"], r["variant"]): r for r in result.rows}
    assert rows[("rollback_before_sale", "history=none")]["all"]["recall"] == 0.0
    assert rows[("rollback_before_sale", "history=none")]["detectable"]["cases"] == 0
    assert rows[("cloned_identity", "connected=no")]["all"]["recall"] == 1.0
    assert (result.false_positive_rate, result.naive_false_positive_rate) == (0.0, 1.0)


def test_the_compiled_rules_annotate_as_the_python_rules() -> None:
    from batch.rules import KernelRuleEngine, PipelinesRuleEngine

    table = pa.Table.from_pylist(fleet.fleet_rows(), schema=MASTER_SCHEMA).sort_by("vehicle")
    compiled, python = load_engine(), load_engine("python")
    assert isinstance(compiled, KernelRuleEngine) and isinstance(python, PipelinesRuleEngine)
    assert annotate_table(table, compiled).to_pylist() == annotate_table(table, python).to_pylist()
