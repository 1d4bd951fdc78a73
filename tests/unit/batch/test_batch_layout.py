"""The master dataset's vehicle-bucket layout: migration, compaction, misplaced rows (no Spark)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.config import BatchConfig
from batch.errors import AuditFailedError, MasterDatasetError
from batch.jobs import run_batch
from batch.layout import compact_bucket, compact_master, migrate_master
from batch.master import JOURNAL, scan_master
from batch.runs import read_runs
from batch.simulation import event_row, pseudonym, write_master_dataset
from pipelines.dataset import bucket_dir, bucket_of, master_files, read_layout, write_layout
from tests.fixtures import batch_fleet as fleet


def _rows(files: list[Path]) -> list[dict]:
    table = pa.concat_tables(
        [pq.read_table(f, partitioning=None).replace_schema_metadata(None) for f in files]
    )
    return sorted(table.to_pylist(), key=lambda r: r["event_id"])


def _many_vehicles(n: int) -> list[dict]:
    return [
        event_row(
            pseudonym(f"WVWZZZ1JZXL{v:06d}"), "odometer_reading", fleet.day(d), "garage-net-03", 1000 * d + v
        )
        for v in range(n)
        for d in range(3)
    ]


def test_migration_rewrites_a_date_master_into_sorted_buckets_once(tmp_path: Path) -> None:
    master = tmp_path / "master"
    rows = _many_vehicles(40) + fleet.fleet_rows()
    write_master_dataset(rows[:60], master, segment="a")
    write_master_dataset(rows[60:], master, segment="b")
    before = _rows(master_files(master))
    report = migrate_master(master, 8)
    assert read_layout(master) == 8
    assert not list(master.glob("event_date=*"))
    assert report.rows == len(rows)
    after = master_files(master)
    assert _rows(after) == before  # the same rows, event_date kept as a column
    assert len(after) == len({f.parent for f in after})  # one file per bucket
    for f in after:
        got = pq.read_table(f, columns=["vehicle", "event_time"]).to_pylist()
        assert got == sorted(got, key=lambda r: (r["vehicle"], r["event_time"]))
        assert {bucket_dir(bucket_of(r["vehicle"], 8)) for r in got} == {f.parent.name}
    scan = scan_master(master)
    assert scan.buckets == 8 and scan.rows == len(rows) and not scan.misplaced
    again = migrate_master(master, 8)  # nothing left to do
    assert again.rows == 0 and _rows(master_files(master)) == before
    with pytest.raises(MasterDatasetError, match="already in 8 vehicle buckets"):
        migrate_master(master, 16)


def test_date_files_committed_while_migrating_are_moved_too(tmp_path: Path) -> None:
    master = tmp_path / "master"
    write_master_dataset(_many_vehicles(10), master, segment="a")
    migrate_master(master, 4)
    # a speed layer that had not seen the layout file yet committed one more date file
    late = event_row(pseudonym("WVWZZZ1JZXL999999"), "odometer_reading", fleet.day(9), "garage-net-03", 5)
    write_layout_backup = (master / "_layout.json").read_text()
    (master / "_layout.json").unlink()
    write_master_dataset([late], master, segment="late")
    (master / "_layout.json").write_text(write_layout_backup)
    migrate_master(master, 4)
    assert not list(master.glob("event_date=*"))
    assert late["event_id"] in {r["event_id"] for r in _rows(master_files(master))}
    assert scan_master(master).rows == 31


def test_compaction_leaves_a_few_large_files_with_the_same_rows(tmp_path: Path) -> None:
    master = tmp_path / "master"
    write_layout(master, 2)
    rows = _many_vehicles(12)
    for i, chunk in enumerate(rows[k : k + 4] for k in range(0, len(rows), 4)):
        write_master_dataset(chunk, master, segment=f"flush-{i}", number=False)
    before = _rows(master_files(master))
    assert len(master_files(master)) > 4
    report = compact_master(master, max_files=1)
    assert len(master_files(master)) == 2 and report.files_out == 2
    assert _rows(master_files(master)) == before
    assert compact_master(master, max_files=1).files_in == 0


def test_a_compaction_interrupted_after_its_commit_point_is_read_once(tmp_path: Path) -> None:
    master = tmp_path / "master"
    write_layout(master, 1)
    rows = _many_vehicles(6)
    write_master_dataset(rows[:9], master, segment="a", number=False)
    write_master_dataset(rows[9:], master, segment="b", number=False)
    bucket = master / bucket_dir(0)
    old = sorted(bucket.glob("*.parquet"))
    real_unlink = Path.unlink

    def crash(self: Path, missing_ok: bool = False) -> None:
        raise SystemExit("killed")  # the process dies before deleting the replaced files

    Path.unlink = crash  # type: ignore[method-assign]
    try:
        with pytest.raises(SystemExit):
            compact_bucket(bucket, old)
    finally:
        Path.unlink = real_unlink  # type: ignore[method-assign]
    assert (bucket / JOURNAL).exists() and all(f.exists() for f in old)
    assert scan_master(master).rows == len(rows)  # the replaced files are skipped
    compact_master(master)
    assert not (bucket / JOURNAL).exists() and not any(f.exists() for f in old)
    assert scan_master(master).rows == len(rows)


def test_a_bucket_file_holding_another_buckets_rows_fails_the_audit_naming_it(tmp_path: Path) -> None:
    master = tmp_path / "master"
    write_layout(master, 4)
    rows = _many_vehicles(20)
    write_master_dataset(rows, master)
    # a writer that put a vehicle in the wrong bucket
    stray = next(r for r in rows if bucket_of(r["vehicle"], 4) != 0)
    wrong = master / bucket_dir(0) / "stray.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [dict(stray, event_id="stray-1")], schema=pq.read_schema(master_files(master)[0])
        ),
        wrong,
    )
    config = BatchConfig(master_dataset=master, batch_dir=tmp_path / "batch")
    with pytest.raises(AuditFailedError, match=r"bucket=000/stray\.parquet holds rows of bucket"):
        run_batch(config)
    assert read_runs(config)[-1]["status"] == "audit_failed"
    assert not (config.batch_dir / "CURRENT.json").exists()
    os.remove(wrong)
    assert not scan_master(master).misplaced
    assert json.loads((master / "_layout.json").read_text())["buckets"] == 4


def test_pcc_batch_migrate_master_then_compact_master(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli.main import main

    master = tmp_path / "master"
    write_master_dataset(_many_vehicles(10), master)
    monkeypatch.setenv("PCC__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PCC__BATCH__MASTER_DATASET", str(master))
    assert main(["batch", "migrate-master", "--buckets", "4"]) == 0
    assert "30 rows" in capsys.readouterr().out
    assert read_layout(master) == 4 and scan_master(master).rows == 30
    assert main(["batch", "migrate-master", "--buckets", "8"]) == 2  # invalid input
    assert "already in 4 vehicle buckets" in capsys.readouterr().err
    write_master_dataset(_many_vehicles(10)[:3], master, segment="more", number=False)
    assert main(["batch", "compact-master", "--max-files", "1"]) == 0
    assert all(len(list(b.glob("*.parquet"))) == 1 for b in master.glob("bucket=*"))
