"""Keeping the master dataset in vehicle buckets: the one-time migration and compaction.

**Migration** (``pcc batch migrate-master``) rewrites a date-partitioned master
dataset (``event_date=YYYY-MM-DD/``) into vehicle buckets once:

1. the date files are read a group at a time (bounded memory) and their rows
   written into ``bucket=NNN/`` directories, which no reader looks at yet
   (readers follow the layout file, and there is none);
2. each bucket is compacted into one file sorted by (vehicle, event time);
3. the layout file is written (atomically): from then on every reader and the
   speed layer's writer use the buckets;
4. date files the speed layer committed meanwhile are moved into the buckets
   too, then the date directories are removed.

A crash before step 3 leaves the date layout in force (a re-run starts over);
after it, a re-run finishes step 4.  Unreadable or drifted date files are not
migrated: they are moved under ``_quarantine/`` with their reason printed.

**Compaction** replaces a bucket's many small files (one per speed-layer
flush) by one sorted file.  It writes the new file under a hidden name, records
``{new, old}`` in the bucket's ``_compaction.json`` (the commit point), renames
the file in, deletes the old ones, then the journal.  A reader that finds a
journal skips the old files it names (:func:`superseded`); the next compaction
finishes the deletion.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batch.errors import MasterDatasetError
from batch.master import JOURNAL, scan_master
from pipelines.dataset import (
    MASTER_SCHEMA,
    bucket_dir,
    read_layout,
    split_by_bucket,
    write_layout,
)
from pipelines.files import atomic_write, fsync_dir

MIGRATION = "_migration.json"
#: Rows read at once while migrating (about 1 kB each).
MIGRATE_GROUP_ROWS = 500_000


@dataclass
class LayoutReport:
    buckets: int
    files_in: int = 0
    rows: int = 0
    files_out: int = 0
    quarantined: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def _write_sorted(table: pa.Table, final: Path) -> None:
    """Write rows sorted by (vehicle, event time) to ``final`` through a hidden temporary file."""
    table = table.sort_by([("vehicle", "ascending"), ("event_time", "ascending")])
    atomic_write(final, lambda fh: pq.write_table(table, fh, compression="zstd", row_group_size=100_000))


def _finish_journal(bucket: Path) -> None:
    journal = bucket / JOURNAL
    if not journal.exists():
        return
    doc = json.loads(journal.read_text(encoding="utf-8"))
    if (bucket / doc["new"]).exists():
        for name in doc["old"]:
            (bucket / name).unlink(missing_ok=True)
    journal.unlink()


def compact_bucket(bucket: Path, files: list[Path]) -> Path:
    """Replace ``files`` (all in ``bucket``) by one sorted file holding their rows; returns it."""
    tables = [
        pq.read_table(f, schema=MASTER_SCHEMA, partitioning=None).replace_schema_metadata(None) for f in files
    ]
    new = bucket / f"part-c{int(time.time() * 1000)}.parquet"
    _write_sorted(pa.concat_tables(tables), new.with_name(new.name + ".staged"))
    journal = bucket / JOURNAL
    tmp = bucket / f".{JOURNAL}.tmp"
    tmp.write_text(json.dumps({"new": new.name, "old": [f.name for f in files]}), encoding="utf-8")
    os.replace(tmp, journal)  # the commit point
    os.replace(new.with_name(new.name + ".staged"), new)
    fsync_dir(bucket)
    _finish_journal(bucket)
    return new


def compact_master(root: Path, max_files: int = 8) -> LayoutReport:
    """Compact every bucket holding more than ``max_files`` files into one (a bucketed master only)."""
    t0 = time.perf_counter()
    buckets = read_layout(root)
    if buckets is None:
        raise MasterDatasetError(
            f"master dataset {root} is not in vehicle buckets: run pcc batch migrate-master first"
        )
    report = LayoutReport(buckets)
    for bucket in sorted(root.glob("bucket=*")):
        _finish_journal(bucket)
        files = sorted(f for f in bucket.glob("*.parquet") if not f.name.startswith((".", "_")))
        if len(files) > max_files:
            report.files_in += len(files)
            report.rows += sum(pq.read_metadata(f).num_rows for f in files)
            compact_bucket(bucket, files)
            report.files_out += 1
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _date_rows(file: Path) -> pa.Table:
    """A date-partitioned file's rows with ``event_date`` (from the directory when the file lacks it)."""
    table = pq.read_table(file, partitioning=None).replace_schema_metadata(None)
    if "event_date" not in table.schema.names:
        date = file.parent.name.split("=", 1)[1]
        table = table.append_column("event_date", pa.array([date] * table.num_rows, pa.string()))
    return table.select(MASTER_SCHEMA.names).cast(MASTER_SCHEMA)


def _move_date_files(root: Path, files: list[Path], buckets: int, name: str, report: LayoutReport) -> None:
    """Rows of date files into bucket files (one per bucket per group of files), fsynced."""
    group: list[pa.Table] = []
    rows = 0
    n = 0

    def flush() -> None:
        nonlocal group, rows, n
        if not group:
            return
        for bucket, part in split_by_bucket(pa.concat_tables(group), buckets):
            _write_sorted(part, root / bucket_dir(bucket) / f"part-{name}-{n}.parquet")
            report.files_out += 1
        group, rows, n = [], 0, n + 1

    for file in files:
        table = _date_rows(file)
        group.append(table)
        rows += table.num_rows
        report.rows += table.num_rows
        report.files_in += 1
        if rows >= MIGRATE_GROUP_ROWS:
            flush()
    flush()


def migrate_master(root: Path, buckets: int) -> LayoutReport:
    """Rewrite a date-partitioned master dataset into ``buckets`` vehicle buckets (see the module doc)."""
    t0 = time.perf_counter()
    declared = read_layout(root)
    if declared is not None and declared != buckets:
        raise MasterDatasetError(
            f"master dataset {root} is already in {declared} vehicle buckets (asked for {buckets})"
        )
    report = LayoutReport(buckets)
    name = f"m{int(time.time() * 1000)}"
    if declared is None:
        for stale in root.glob("bucket=*"):  # an interrupted migration: start over
            shutil.rmtree(stale)
        scan = scan_master(root)
        for q in scan.quarantined:
            src = root / q.file
            dst = root / "_quarantine" / q.file
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            report.quarantined.append(q.__dict__)
        moved = list(scan.files)
        _move_date_files(root, moved, buckets, name, report)
        for bucket in sorted(root.glob("bucket=*")):
            files = sorted(bucket.glob("*.parquet"))
            if len(files) > 1:
                compact_bucket(bucket, files)
        report.files_out = len(list(root.glob("bucket=*/*.parquet")))
        journal = root / f".{MIGRATION}.tmp"
        journal.write_text(json.dumps({"moved": [str(f.relative_to(root)) for f in moved]}), encoding="utf-8")
        os.replace(journal, root / MIGRATION)
        write_layout(root, buckets)  # readers and the speed layer switch to the buckets here
        fsync_dir(root)
    # date files committed by the speed layer before it saw the layout file
    journal_file = root / MIGRATION
    done = (
        set(json.loads(journal_file.read_text(encoding="utf-8"))["moved"]) if journal_file.exists() else set()
    )
    late = sorted(
        f
        for f in root.glob("event_date=*/*.parquet")
        if not f.name.startswith((".", "_")) and str(f.relative_to(root)) not in done
    )
    if late:
        _move_date_files(root, late, buckets, name + "-late", report)
    for part in root.glob("event_date=*"):
        shutil.rmtree(part)
    journal_file.unlink(missing_ok=True)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report
