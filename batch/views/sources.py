"""``source_reputation`` from each vehicle bucket's sums, not from a second scan of ``vehicle_history``.

A bucket task already holds the bucket's ``vehicle_history`` rows when it
writes them; it adds them up per producer (:func:`source_sums`: events,
verified, consistent, timely, the sum of the quality index, first and last
event time) and leaves the sums beside the views, one small file per bucket
(:data:`SOURCES_DIR`).  The run adds the buckets' sums up in bucket order
(:func:`reputation_from_sums`); a carried bucket's file is linked from the
previous version like its views, so an incremental run adds up what it did
not recompute instead of reading it again.

The shares are :func:`batch.views.build.source_reputation`'s (Spark's, which
the date layout still uses): every column of ``vehicle_history`` it reads is
non-null, so each ``avg`` is a sum over the event count.  The timely share
depends on ``batch.timely_lag_s``: a sums file records the lag it was made with,
and one made with another lag is not used (:func:`read_sums` returns None and
the run aggregates ``vehicle_history`` in Spark, as before).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.files import atomic_write

#: The version's directory of per-bucket producer sums (``bucket-NNN.parquet``), kept with it.
SOURCES_DIR = "_sources"
_LAG_KEY = b"pcc.timely_lag_s"
_TS = pa.timestamp("ms", tz="UTC")
SUMS_SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("events", pa.int64()),
        ("verified", pa.int64()),
        ("consistent", pa.int64()),
        ("timely", pa.int64()),
        ("quality", pa.float64()),
        ("first_event_time", _TS),
        ("last_event_time", _TS),
    ]
)
REPUTATION_SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("events", pa.int64()),
        ("verified_share", pa.float64()),
        ("consistent_share", pa.float64()),
        ("timely_share", pa.float64()),
        ("mean_quality", pa.float64()),
        ("first_event_time", _TS),
        ("last_event_time", _TS),
        ("reputation", pa.float64()),
    ]
)


def _seconds(times: pa.ChunkedArray) -> pa.Array:
    """Whole epoch seconds, floored (Spark's ``cast(timestamp as long)``)."""
    return pc.floor(pc.divide(times.cast(_TS).cast(pa.int64()).cast(pa.float64()), 1000.0))


def _add_up(parts: pa.Table) -> pa.Table:
    """``parts`` (columns of :data:`SUMS_SCHEMA`) added up per producer, in row order, sorted by it."""
    counts = ["events", "verified", "consistent", "timely", "quality"]
    g = parts.group_by("source_id", use_threads=False).aggregate(
        [*((c, "sum") for c in counts), ("first_event_time", "min"), ("last_event_time", "max")]
    )
    names = [f"{c}_sum" for c in counts] + ["first_event_time_min", "last_event_time_max"]
    return pa.table([g["source_id"], *(g[n] for n in names)], schema=SUMS_SCHEMA).sort_by("source_id")


def source_sums(history: pa.Table, timely_lag_s: int) -> pa.Table:
    """Per producer, the sums behind its shares over some ``vehicle_history`` rows."""
    if history.num_rows == 0:
        return SUMS_SCHEMA.empty_table()
    lag_s = pc.subtract(_seconds(history["ingestion_time"]), _seconds(history["event_time"]))
    # Spark's size(NULL) is -1: a row without a flag list is not counted consistent
    no_flags = pc.fill_null(pc.equal(pc.list_value_length(history["batch_flags"]), 0), False)
    times = history["event_time"].cast(_TS)
    rows = pa.table(
        [
            history["source_id"],
            pa.repeat(1, history.num_rows).cast(pa.int64()),
            pc.equal(history["verification"], "verified").cast(pa.int64()),
            no_flags.cast(pa.int64()),
            pc.less_equal(lag_s, float(timely_lag_s)).cast(pa.int64()),
            history["quality"],
            times,
            times,
        ],
        schema=SUMS_SCHEMA,
    )
    return _add_up(rows)


def sums_path(version: Path, bucket: int) -> Path:
    return version / SOURCES_DIR / f"bucket-{bucket:03d}.parquet"


def write_sums(sums: pa.Table, path: Path, timely_lag_s: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = sums.replace_schema_metadata({_LAG_KEY: str(timely_lag_s).encode()})
    atomic_write(path, lambda fh: pq.write_table(table, fh, compression="zstd"))


def read_sums(paths: Sequence[Path], timely_lag_s: int) -> list[pa.Table] | None:
    """The buckets' sums, or None when one is missing or was made with another ``timely_lag_s``."""
    tables = []
    for path in paths:
        try:
            table = pq.read_table(path, partitioning=None)
        except (OSError, pa.ArrowInvalid):
            return None
        if (table.schema.metadata or {}).get(_LAG_KEY) != str(timely_lag_s).encode():
            return None
        tables.append(table.replace_schema_metadata(None).cast(SUMS_SCHEMA))
    return tables


def reputation_from_sums(tables: Sequence[pa.Table]) -> pa.Table:
    """``source_reputation`` from the buckets' sums, added up in the order given, sorted by producer."""
    if not tables:
        return REPUTATION_SCHEMA.empty_table()
    g = _add_up(pa.concat_tables(tables))
    events = g["events"].cast(pa.float64())

    def share(column: str) -> pa.ChunkedArray:
        return pc.divide(g[column].cast(pa.float64()), events)

    verified, consistent, timely = share("verified"), share("consistent"), share("timely")
    reputation = pc.divide(pc.add(pc.add(verified, consistent), timely), 3.0)
    return pa.table(
        [
            g["source_id"],
            g["events"],
            verified,
            consistent,
            timely,
            share("quality"),
            g["first_event_time"],
            g["last_event_time"],
            reputation,
        ],
        schema=REPUTATION_SCHEMA,
    )


def write_reputation(table: pa.Table, view_dir: Path) -> None:
    """The view as one sorted file, where Spark's writer would put it (``part-00000…``)."""
    view_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(view_dir / "part-00000.parquet", lambda fh: pq.write_table(table, fh, compression="zstd"))
