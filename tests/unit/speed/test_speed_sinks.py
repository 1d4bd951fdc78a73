"""The speed layer's transactional flush: what a reader finds after a flush, and after a crash inside one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("apache_beam")

from pipelines.dataset import DEFAULT_BUCKETS, MASTER_COLUMNS, bucket_dir, bucket_of, read_layout
from speed.config import SpeedConfig
from speed.errors import SinkStateError
from speed.process import EventProcessor
from speed.roots import InMemoryRoots
from speed.sinks import SinkWriter, read_master, recover
from speed.source import KafkaRecord
from tests.fixtures.synthetic import SyntheticSource, vehicle, wire

DAY = 86_400_000


def _batch(n: int, first_offset: int = 0, days_apart: bool = False):
    roots = InMemoryRoots()
    src = SyntheticSource("cc-aurora", roots, checkpoint_every=10_000)
    start = int(time.time() * 1000) - 40 * DAY
    step = DAY if days_apart else 60_000
    envs = [src.append(src.odometer(vehicle(i % 5), 100 + i, start + i * step)) for i in range(n)]
    src.checkpoint()
    records = [
        KafkaRecord("pcc.telemetry", 0, first_offset + i, 0, None, wire(e)) for i, e in enumerate(envs)
    ]
    return roots, records


def _writer(tmp_path: Path) -> SinkWriter:
    return SinkWriter(
        tmp_path / "realtime", tmp_path / "master", tmp_path / "speed", "w0", 250, dead_letters=None
    )


def _proc(tmp_path: Path, roots: InMemoryRoots) -> EventProcessor:
    config = SpeedConfig(
        bootstrap="x", data_dir=tmp_path, topics=("pcc.telemetry",), deadletter_topic="pcc.deadletter"
    )
    return EventProcessor(config, roots)


def _buckets_of(rows: list[dict]) -> list[str]:
    return sorted({bucket_dir(bucket_of(r["vehicle"], DEFAULT_BUCKETS)) for r in rows})


def test_flush_writes_view_and_master_clustered_by_vehicle_bucket_with_offsets(tmp_path: Path) -> None:
    roots, records = _batch(6, days_apart=True)
    proc = _proc(tmp_path, roots)
    sinks = _writer(tmp_path)
    result = proc.process_batch(records, int(time.time() * 1000))
    sinks.add(records, result)
    assert sinks.flush({}, final=True) == 6
    segments = list((tmp_path / "realtime").glob("seg-*-w0-*.parquet"))
    assert len(segments) == 1
    view = pq.read_table(segments[0])
    assert tuple(view.schema.names) == MASTER_COLUMNS and view.num_rows == 6
    assert read_layout(tmp_path / "master") == DEFAULT_BUCKETS
    dirs = sorted(p.name for p in (tmp_path / "master").iterdir() if p.is_dir())
    assert dirs == _buckets_of(result.rows)
    for file in _master_files(tmp_path):
        rows = pq.read_table(file, columns=["vehicle", "event_time"]).to_pylist()
        assert rows == sorted(rows, key=lambda r: (r["vehicle"], r["event_time"]))
        assert {bucket_dir(bucket_of(r["vehicle"], DEFAULT_BUCKETS)) for r in rows} == {file.parent.name}
    assert recover(tmp_path / "speed", tmp_path / "realtime", tmp_path / "master") == {
        ("pcc.telemetry", 0): 6
    }
    assert json.loads(view.schema.metadata[b"pcc.offsets"]) == {"pcc.telemetry/0": 6}


def test_offsets_stop_before_an_event_still_waiting(tmp_path: Path) -> None:
    roots, records = _batch(3, first_offset=10)
    sinks = _writer(tmp_path)
    proc = _proc(tmp_path, roots)
    sinks.add(records, proc.process_batch(records, int(time.time() * 1000)))
    sinks.flush({("pcc.telemetry", 0): 11}, final=True)  # offset 11 waits for its checkpoint
    assert recover(tmp_path / "speed", tmp_path / "realtime", tmp_path / "master") == {
        ("pcc.telemetry", 0): 11
    }


def test_crash_after_the_commit_point_is_finished_on_recovery(tmp_path: Path, monkeypatch) -> None:
    roots, records = _batch(4)
    sinks = _writer(tmp_path)
    sinks.add(records, _proc(tmp_path, roots).process_batch(records, int(time.time() * 1000)))
    real_replace = os.replace
    calls = {"n": 0}

    def crash_after_manifest(src: str, dst: str) -> None:
        if str(dst).endswith(".parquet"):
            calls["n"] += 1
            raise SystemExit("killed")  # the process dies before any rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_after_manifest)
    with pytest.raises(SystemExit):
        sinks.flush({}, final=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert list((tmp_path / "realtime").glob("*.parquet")) == []  # nothing visible yet
    assert recover(tmp_path / "speed", tmp_path / "realtime", tmp_path / "master") == {
        ("pcc.telemetry", 0): 4
    }
    assert len(pq.read_table(tmp_path / "realtime").to_pylist()) == 4
    assert len(read_master(tmp_path / "master")) == 4
    assert not list(tmp_path.rglob("*.tmp"))


def test_crash_before_the_commit_point_leaves_nothing_and_resumes_from_the_start(
    tmp_path: Path, monkeypatch
) -> None:
    roots, records = _batch(4)
    sinks = _writer(tmp_path)
    sinks.add(records, _proc(tmp_path, roots).process_batch(records, int(time.time() * 1000)))
    import speed.sinks as sinks_module

    def die(path: Path, obj: object) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(sinks_module, "_write_json_atomic", die)
    with pytest.raises(SystemExit):
        sinks.flush({}, final=True)
    monkeypatch.undo()
    assert recover(tmp_path / "speed", tmp_path / "realtime", tmp_path / "master") == {}
    assert not list(tmp_path.rglob("*.parquet*"))  # the orphan temporary files are gone


def test_restart_skips_what_the_master_dataset_already_holds(tmp_path: Path) -> None:
    roots, records = _batch(5)
    sinks = _writer(tmp_path)
    proc = _proc(tmp_path, roots)
    sinks.add(records, proc.process_batch(records, int(time.time() * 1000)))
    sinks.flush({}, final=True)
    fresh = _proc(tmp_path, roots)
    assert fresh.restore(read_master(tmp_path / "master")) == 5
    again = fresh.process_batch(records, int(time.time() * 1000))
    assert (again.rows, again.dead, again.redelivered) == ([], [], 5)


def _segments(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "realtime").glob("seg-*.parquet"))


def _master_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "master").rglob("*.parquet"))


def _ids(files: list[Path]) -> list[str]:
    return sorted(i for f in files for i in pq.read_table(f, columns=["event_id"]).column(0).to_pylist())


def _flush_in_steps(tmp_path: Path, sinks: SinkWriter, steps: int, n: int = 30):
    """``steps`` real-time flushes of a backfill spanning ``n`` event dates; returns the records."""
    roots, records = _batch(n, days_apart=True)
    proc = _proc(tmp_path, roots)
    size = n // steps
    for i in range(steps):
        part = records[i * size : (i + 1) * size]
        sinks.add(part, proc.process_batch(part, int(time.time() * 1000)))
        sinks.flush({})
    return roots, records


def test_a_master_not_yet_migrated_keeps_its_event_date_partitions(tmp_path: Path) -> None:
    (tmp_path / "master" / "event_date=2020-01-01").mkdir(parents=True)  # the older layout
    roots, records = _batch(6, days_apart=True)
    sinks = _writer(tmp_path)
    result = _proc(tmp_path, roots).process_batch(records, int(time.time() * 1000))
    sinks.add(records, result)
    sinks.flush({}, final=True)
    assert read_layout(tmp_path / "master") is None
    dates = {f.parent.name for f in _master_files(tmp_path)}
    assert dates == {f"event_date={r['event_date']}" for r in result.rows}
    assert len(read_master(tmp_path / "master")) == 6


def test_a_backfill_gets_one_master_file_per_bucket_not_one_per_bucket_per_flush(tmp_path: Path) -> None:
    sinks = _writer(tmp_path)  # the master cadence (100k rows / 60 s) is not reached by 30 rows
    _flush_in_steps(tmp_path, sinks, steps=5)
    assert len(_segments(tmp_path)) == 5  # the real-time view is fresh at every flush
    assert _master_files(tmp_path) == []
    sinks.flush({}, final=True)
    rows = pq.read_table(_segments(tmp_path), columns=["vehicle"]).to_pylist()
    assert len(_master_files(tmp_path)) == len(_buckets_of(rows))  # one file per bucket, 30 dates
    assert _ids(_master_files(tmp_path)) == _ids(_segments(tmp_path))
    assert len(_ids(_segments(tmp_path))) == 30
    state = json.loads((tmp_path / "speed" / "offsets.json").read_text())
    assert state["master_offsets"] == state["offsets"] == {"pcc.telemetry/0": 30}
    assert state["unmastered"] == []


def test_the_master_dataset_is_written_in_the_background_once_enough_rows_wait(tmp_path: Path) -> None:
    sinks = SinkWriter(
        tmp_path / "realtime", tmp_path / "master", tmp_path / "speed", "w0", 250, None, master_flush_rows=10
    )
    _flush_in_steps(tmp_path, sinks, steps=3)  # 10 rows per flush: each one reaches the row budget
    deadline = time.monotonic() + 30
    while sinks.master_lag_rows and time.monotonic() < deadline:
        sinks.flush({})  # commits a finished background write, starts the next one
        time.sleep(0.01)
    assert sinks.master_lag_rows == 0
    assert _ids(_master_files(tmp_path)) == _ids(_segments(tmp_path))
    rows = pq.read_table(_segments(tmp_path), columns=["vehicle"]).to_pylist()
    assert len(_master_files(tmp_path)) >= len(_buckets_of(rows))


def test_crash_with_rows_only_in_the_real_time_view_copies_them_to_the_master_dataset(
    tmp_path: Path,
) -> None:
    sinks = _writer(tmp_path)
    roots, records = _flush_in_steps(tmp_path, sinks, steps=3)
    # the process dies here: 30 rows in three segments, none in the master dataset yet
    assert recover(tmp_path / "speed", tmp_path / "realtime", tmp_path / "master") == {
        ("pcc.telemetry", 0): 30
    }
    assert _ids(_master_files(tmp_path)) == _ids(_segments(tmp_path))
    assert len(_ids(_master_files(tmp_path))) == 30
    # a second recovery has nothing left to copy
    recover(tmp_path / "speed", tmp_path / "realtime", tmp_path / "master")
    assert len(_ids(_master_files(tmp_path))) == 30
    fresh = _proc(tmp_path, roots)
    assert fresh.restore(read_master(tmp_path / "master")) == 30
    again = fresh.process_batch(records, int(time.time() * 1000))
    assert (again.rows, again.dead, again.redelivered) == ([], [], 30)


def test_crash_during_a_background_master_write_leaves_each_row_once(tmp_path: Path, monkeypatch) -> None:
    import speed.master as master_module

    sinks = SinkWriter(
        tmp_path / "realtime", tmp_path / "master", tmp_path / "speed", "w0", 250, None, master_flush_rows=10
    )
    (tmp_path / "master" / "event_date=2000-01-01").mkdir(parents=True)  # many files per write: one per date
    real_write = master_module.write_parquet
    written: list[Path] = []

    def die_after_two_files(table, final, offsets):  # the process dies mid-way through a master write
        if len(written) == 2:
            raise SystemExit("killed")
        written.append(real_write(table, final, offsets))
        return written[-1]

    monkeypatch.setattr(master_module, "write_parquet", die_after_two_files)
    _flush_in_steps(tmp_path, sinks, steps=2, n=20)  # the second flush starts a master write
    with pytest.raises(SystemExit):
        sinks.flush({}, final=True)
    monkeypatch.undo()
    assert [p for p in written if p.exists()]  # orphan temporary master files
    assert recover(tmp_path / "speed", tmp_path / "realtime", tmp_path / "master") == {
        ("pcc.telemetry", 0): 20
    }
    assert not list(tmp_path.rglob("*.tmp"))
    assert _ids(_master_files(tmp_path)) == _ids(_segments(tmp_path))
    assert len(_ids(_master_files(tmp_path))) == 20


def test_a_lost_segment_whose_rows_are_not_in_the_master_dataset_is_an_error(tmp_path: Path) -> None:
    sinks = _writer(tmp_path)
    _flush_in_steps(tmp_path, sinks, steps=2, n=10)
    _segments(tmp_path)[0].unlink()
    with pytest.raises(SinkStateError, match="is gone but its rows are not in the master dataset"):
        recover(tmp_path / "speed", tmp_path / "realtime", tmp_path / "master")
