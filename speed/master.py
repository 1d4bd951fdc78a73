"""The master dataset's side of the sinks: rows gathered over many real-time flushes, written per vehicle bucket.

A real-time segment is written at every flush (every ``flush_interval_ms``);
the master dataset is written on its own, slower cadence: when
``master_flush_rows`` rows are waiting or the oldest has waited
``master_flush_interval_s``.  Each master flush writes one file per vehicle
bucket it has rows for (sorted by vehicle, event time; :mod:`pipelines.dataset`),
or per event date in a master dataset still in the older layout; the batch
layer compacts a bucket's files into a few large ones.

:class:`MasterBatcher` keeps the tables of the segments not yet in the master
dataset and writes them in a background thread (Parquet encoding, zstd and
fsync release the GIL) as ``*.parquet.tmp`` files; the next real-time flush
commits the renames in its own transaction (see :mod:`speed.sinks`).  The
master dataset therefore always holds exactly the rows of a prefix of the
segments, which is what lets recovery copy the rest from the segments.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.dataset import DEFAULT_BUCKETS, bucket_dir, read_layout, split_by_bucket, write_layout

Offsets = dict[tuple[str, int], int]


def offsets_to_json(offsets: Offsets) -> dict[str, int]:
    return {f"{t}/{p}": o for (t, p), o in sorted(offsets.items())}


def offsets_from_json(obj: dict[str, int]) -> Offsets:
    out: Offsets = {}
    for key, offset in obj.items():
        topic, _, partition = key.rpartition("/")
        out[(topic, int(partition))] = int(offset)
    return out


def write_parquet(table: pa.Table, final: Path, offsets: Offsets) -> Path:
    """Write ``table`` to ``final`` + ``.tmp`` (fsynced), with the offsets it covers; returns the temporary path."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    meta = {b"pcc.offsets": json.dumps(offsets_to_json(offsets)).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
    except Exception:  # a failed write (a full disk) leaves no temporary file; a killed process may
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def split_by_date(table: pa.Table) -> list[tuple[str, pa.Table]]:
    """``(event_date, rows of that date)`` in date order; rows keep their order within a date."""
    if table.num_rows == 0:
        return []
    dates = table.column("event_date")
    if pc.count_distinct(dates).as_py() == 1:
        return [(dates[0].as_py(), table)]
    table = table.take(pc.sort_indices(dates))  # a stable sort
    runs = pc.run_end_encode(table.column("event_date").combine_chunks())
    out: list[tuple[str, pa.Table]] = []
    start = 0
    for end, date in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
        out.append((date, table.slice(start, end - start)))
        start = end
    return out


def master_layout(master_dir: Path) -> int | None:
    """The bucket count the master dataset is written in (``None``: the older date layout).

    A new master dataset gets the vehicle-bucket layout; one that already holds
    ``event_date=`` partitions keeps them until ``pcc batch migrate-master``
    rewrites it (which writes the layout file: the next write follows it).
    """
    buckets = read_layout(master_dir)
    if buckets is None and not any(master_dir.glob("event_date=*")):
        write_layout(master_dir, DEFAULT_BUCKETS)
        buckets = DEFAULT_BUCKETS
    return buckets


def write_master_files(
    table: pa.Table, master_dir: Path, name: str, offsets: Offsets
) -> list[tuple[str, str]]:
    """One ``part-<name>.parquet`` per vehicle bucket (rows sorted by vehicle, event time), or per
    event date in the older layout, as temporary files; returns the renames to commit."""
    buckets = master_layout(master_dir)
    if buckets is None:
        parts = [
            (master_dir / f"event_date={date}" / f"part-{name}.parquet", part)
            for date, part in split_by_date(table)
        ]
    else:
        parts = [
            (master_dir / bucket_dir(bucket) / f"part-{name}.parquet", part)
            for bucket, part in split_by_bucket(table, buckets)
        ]
    renames: list[tuple[str, str]] = []
    try:
        for final, part in parts:
            renames.append((str(write_parquet(part, final, offsets)), str(final)))
    except Exception:  # a full disk: no temporary file of this write is left behind
        for tmp, _ in renames:
            Path(tmp).unlink(missing_ok=True)
        raise
    return renames


@dataclass
class Prepared:
    """Master files written (not yet renamed) for the segments up to flush ``seq``."""

    seq: int
    offsets: Offsets
    renames: list[tuple[str, str]]
    rows: int


@dataclass
class _Pending:
    seq: int
    table: pa.Table
    offsets: Offsets


@dataclass
class MasterBatcher:
    """Segments' tables waiting for the master dataset, and the background write of a batch of them."""

    master_dir: Path
    worker: str
    max_rows: int
    interval_s: float
    _pending: list[_Pending] = field(default_factory=list)
    _rows: int = 0
    _oldest: float | None = None
    _future: Future[Prepared] | None = None
    _pool: ThreadPoolExecutor | None = None

    def add(self, seq: int, table: pa.Table, offsets: Offsets, now: float) -> None:
        """The rows of the segment written by flush ``seq`` (which covers ``offsets``)."""
        self._pending.append(_Pending(seq, table, dict(offsets)))
        self._rows += table.num_rows
        if self._oldest is None:
            self._oldest = now

    @property
    def waiting_rows(self) -> int:
        """Rows in the real-time view that are not in the master dataset yet (waiting or being written)."""
        return self._rows

    def due(self, now: float) -> bool:
        if not self._pending or self._future is not None:
            return False
        return self._rows >= self.max_rows or now - (self._oldest or now) >= self.interval_s

    def start(self) -> None:
        """Write every waiting segment's rows in the background (see :meth:`take`)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pcc-speed-master")
        batch, self._pending, self._oldest = self._pending, [], None
        self._future = self._pool.submit(self._write, batch)

    def ready(self) -> bool:
        """A background write has finished (its files wait for the next flush to commit them)."""
        return self._future is not None and self._future.done()

    def take(self, *, wait: bool) -> Prepared | None:
        """The finished background write, if any (``wait``: wait for a running one)."""
        if self._future is None or not (wait or self._future.done()):
            return None
        future, self._future = self._future, None
        prepared = future.result()  # a failed write raises here: the flush fails, recovery redoes it
        self._rows -= prepared.rows
        return prepared

    def write_now(self) -> Prepared | None:
        """Everything still waiting, written in this thread (the last flush of a run)."""
        if not self._pending:
            return None
        batch, self._pending, self._oldest = self._pending, [], None
        prepared = self._write(batch)
        self._rows -= prepared.rows
        return prepared

    def _write(self, batch: list[_Pending]) -> Prepared:
        last = batch[-1]
        table = pa.concat_tables([p.table for p in batch])
        name = f"{int(time.time() * 1000)}-{self.worker}-{last.seq}"
        renames = write_master_files(table, self.master_dir, name, last.offsets)
        return Prepared(last.seq, last.offsets, renames, table.num_rows)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
