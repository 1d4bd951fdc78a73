"""The audit's distinct checks file by file, for views whose files each hold whole vehicles.

An exact distinct count over a whole view is a shuffle of every key (27 s of a 50 s audit at 10M
events on two cores). A bucketed version does not need one: each file of a per-vehicle view
holds whole vehicles, so when the files' vehicle ranges are disjoint,

* a key that includes ``vehicle`` (``(vehicle, seq)``, ``vehicle``) can repeat only within one
  file, and the view's repeats are the sum of each file's;
* the view's distinct vehicles are the sum of each file's;
* a key without ``vehicle`` (``event_id``) can repeat across files too: each file also gives a
  64-bit digest of each of its distinct values, and the digests of all files are compared in
  the driver (8 bytes a row). Equal values always give equal digests, so a repeat is never
  missed; two values with equal digests (a real repeat, or a collision) send that key to the
  exact count.

Nothing is trusted: files whose vehicle ranges overlap, a file with no vehicle range, or a
compound key without ``vehicle`` (no digest) mean :func:`merge` answers ``None`` for what it cannot vouch for,
and the audit counts it exactly as before. What is counted matches the Spark checks it
replaces: null values (and compound keys with a null part) are left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from batch.rowchecks import RowChecks

Key = tuple[str, ...]

FILE_KEYS_DDL = (
    "file string, rows bigint, first string, last string, vehicles bigint, "
    "repeats array<bigint>, digests array<binary>, rows_checked string"
)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@dataclass(frozen=True)
class FileKeys:
    """One file's part of the distinct checks of ``keys`` (in that order)."""

    file: str
    rows: int
    first: str | None  # lowest and highest vehicle of the file (None: no vehicle in it)
    last: str | None
    vehicles: int  # distinct vehicles
    repeats: tuple[int, ...]  # per key: rows less distinct values, within the file
    digests: tuple[bytes | None, ...]  # per key without vehicle: the sorted distinct digests (uint64)
    rows_checked: str = "{}"  # the suite's row-level counts over the file (JSON; :mod:`batch.rowchecks`)


def digests(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A deterministic 64-bit digest of each non-null string (its bytes 8 at a time, FNV's prime and an
    xor-shift, seeded with the length): equal strings give equal digests in every process."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    array = array.cast(pa.large_binary()) if array.type != pa.large_binary() else array
    if array.null_count:
        array = array.drop_null()
    n = len(array)
    out = np.empty(n, np.uint64)
    if n == 0:
        return out
    lengths = np.diff(_offsets(array))
    for width in np.unique(lengths):  # a few lengths at most: the strings of each as fixed-width rows
        rows = np.nonzero(lengths == width)[0]
        same = array if len(rows) == n else array.filter(pa.array(lengths == width))
        start, stop = _offsets(same)[[0, -1]]
        words = (int(width) + 7) // 8
        block = np.zeros((len(rows), words * 8), np.uint8)
        block[:, : int(width)] = np.frombuffer(same.buffers()[2], np.uint8)[start:stop].reshape(len(rows), -1)
        digest = np.full(len(rows), _FNV_OFFSET ^ np.uint64(width), np.uint64)
        with np.errstate(over="ignore"):
            for word in block.view(np.uint64).T:  # 8 bytes at a time, then mixed (xor-shift-multiply)
                digest ^= word
                digest *= _FNV_PRIME
                digest ^= digest >> np.uint64(29)
        out[rows] = digest
    return out


def _offsets(array: pa.Array) -> np.ndarray:
    """A large binary array's value offsets, as numpy (into its data buffer)."""
    return np.frombuffer(array.buffers()[1], np.int64)[array.offset : array.offset + len(array) + 1]


def _distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values (a sort: numpy's hash-based ``unique`` takes 20 times as long at 10M)."""
    ordered = np.sort(values)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if len(ordered) else ordered


def key_rows(table: pa.Table, key: Key) -> pa.Table:
    """The key's columns of ``table``, less the rows where a part of it is null (Spark's ``count``)."""
    part = table.select(list(key))
    for name in key:
        part = part.filter(pc.is_valid(part[name]))
    return part


def key_repeats(part: pa.Table) -> int:
    """Rows of :func:`key_rows` minus its distinct keys: what a uniqueness expectation counts."""
    if part.num_columns == 1:
        return part.num_rows - int(pc.count_distinct(part.column(0)).as_py())
    return part.num_rows - part.group_by(part.column_names).aggregate([]).num_rows


def file_keys(path: str, keys: Sequence[Key], rows: RowChecks | None = None) -> FileKeys:
    """Read the key columns of one file and count what repeats within it (no Spark); with ``rows``,
    the suite's row-level checks over the same read."""
    columns = list(
        dict.fromkeys(["vehicle", *(c for key in keys for c in key), *(rows.columns if rows else ())])
    )
    table = pq.read_table(path, columns=columns, partitioning=None)
    vehicle = table["vehicle"]
    bounds = pc.min_max(vehicle)
    repeats: list[int] = []
    found: list[bytes | None] = []
    for key in keys:
        part = key_rows(table, key)
        repeats.append(key_repeats(part))
        if "vehicle" in key:
            found.append(b"")  # cannot repeat across files whose vehicle ranges are disjoint
        else:
            found.append(_distinct(digests(part[key[0]])).tobytes() if len(key) == 1 else None)
    return FileKeys(
        file=path,
        rows=table.num_rows,
        first=bounds["min"].as_py(),
        last=bounds["max"].as_py(),
        vehicles=int(pc.count_distinct(vehicle).as_py()),
        repeats=tuple(repeats),
        digests=tuple(found),
        rows_checked=json.dumps(rows(table)) if rows is not None else "{}",
    )


@dataclass(frozen=True)
class Merged:
    """What the files vouch for: each key's repeats over the view (None: count it exactly), and the
    view's distinct vehicles (None: count them exactly)."""

    repeats: dict[Key, int | None]
    vehicles: int | None


def merge(parts: Iterable[FileKeys], keys: Sequence[Key]) -> Merged:
    """The view's repeats per key and its distinct vehicles, from its files' parts."""
    parts = list(parts)
    filled = [p for p in parts if p.rows]
    ranged = [p for p in filled if p.first is not None and p.last is not None]
    ordered = sorted(ranged, key=lambda p: str(p.first))
    disjoint = len(ranged) == len(filled) and all(str(a.last) < str(b.first) for a, b in pairwise(ordered))
    if not disjoint:
        return Merged({key: None for key in keys}, None)
    repeats: dict[Key, int | None] = {}
    for i, key in enumerate(keys):
        within = sum(p.repeats[i] for p in parts)
        if "vehicle" in key:
            repeats[key] = within
            continue
        found = [p.digests[i] for p in parts]
        if any(d is None for d in found):
            repeats[key] = None
            continue
        every = np.sort(np.concatenate([np.frombuffer(d or b"", np.uint64) for d in found]))
        repeats[key] = None if np.any(every[1:] == every[:-1]) else within
    return Merged(repeats, sum(p.vehicles for p in parts))


def file_key_pass(
    spark: SparkSession, files: Sequence[str], keys: Sequence[Key], rows: RowChecks | None = None
) -> list[FileKeys]:
    """:func:`file_keys` of every file, a few Spark tasks per core reading the key columns (and the
    columns of ``rows``); nothing is shuffled and one row per file comes back."""
    from batch.views.buckets import collect_over_groups

    if not files:
        return []
    wanted = [tuple(k) for k in keys]

    def _keys(name: str) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist([file_keys(name, wanted, rows).__dict__], schema=_SCHEMA)

    return [_from_row(r.asDict()) for r in collect_over_groups(spark, list(files), _keys, FILE_KEYS_DDL)]


_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("rows", pa.int64()),
        ("first", pa.string()),
        ("last", pa.string()),
        ("vehicles", pa.int64()),
        ("repeats", pa.list_(pa.int64())),
        ("digests", pa.list_(pa.binary())),
        ("rows_checked", pa.string()),
    ]
)


def _from_row(row: dict[str, Any]) -> FileKeys:
    return FileKeys(
        file=row["file"],
        rows=int(row["rows"]),
        first=row["first"],
        last=row["last"],
        vehicles=int(row["vehicles"]),
        repeats=tuple(int(r) for r in row["repeats"]),
        digests=tuple(None if d is None else bytes(d) for d in row["digests"]),
        rows_checked=row["rows_checked"],
    )
