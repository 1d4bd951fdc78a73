"""One bucket's per-vehicle views, written by the task that annotated it (no shuffle, no Spark writer).

A task gets a :class:`BucketTask`: the bucket's master files, the version
directory to write, and (for an incremental run) the previous version's files
of that bucket plus which vehicles to redo.  It annotates those vehicles
(:func:`batch.views.annotate.annotate_batches`), projects the rows into
``vehicle_history``, ``mileage_timeline`` and ``fraud_scores`` exactly as
:mod:`batch.views.build` does in Spark, merges the previous version's rows of
every other vehicle of the bucket, and writes one file per view named after
the bucket (sorted by vehicle, then ``seq``).  It returns a one-row summary.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch.filekeys import FileKeys, file_keys
from batch.rules import RuleEngine
from batch.views.annotate import annotate_table, profile_table_sums
from batch.views.sources import SUMS_SCHEMA, source_sums, sums_path, write_sums
from pipelines.dataset import MASTER_COLUMNS, MASTER_SCHEMA
from pipelines.files import atomic_write

if TYPE_CHECKING:
    from batch.audit import FileChecks

PER_VEHICLE_VIEWS: tuple[str, ...] = ("vehicle_history", "mileage_timeline", "fraud_scores")
HISTORY_COLUMNS = [
    "vehicle",
    "seq",
    *[c for c in MASTER_COLUMNS if c != "vehicle"],
    "batch_flags",
    "flag_evidence",
]
MILEAGE_COLUMNS = [
    "vehicle", "seq", "event_id", "event_time", "event_type", "source_id", "source_kind", "verification",
    "quality", "odometer_km", "reconciled_km", "is_outlier", "outlier_reason",
]  # fmt: skip
_REASON = pa.struct([("flag", pa.string()), ("evidence", pa.list_(pa.string()))])
SCORES_SCHEMA = pa.schema(
    [
        ("vehicle", pa.string()),
        ("score", pa.float64()),
        ("label", pa.string()),
        ("reasons", pa.list_(_REASON)),
        ("flags", pa.list_(pa.string())),
        ("explanation", pa.list_(pa.string())),
        ("events", pa.int64()),
        ("last_event_time", pa.timestamp("ms", tz="UTC")),
        ("duplicates", pa.int32()),
    ]
)
SUMMARY_SCHEMA = pa.schema(
    [
        ("bucket", pa.int32()),
        ("rows_in", pa.int64()),
        ("vehicles_redone", pa.int64()),
        ("history_rows", pa.int64()),
        ("mileage_rows", pa.int64()),
        ("score_rows", pa.int64()),
        (
            "file_keys",
            pa.binary(),
        ),  # pickled [(file, keys, checks, FileKeys, digest files)] (:func:`count_written`)
    ]
)


def bucket_profile_sums(files: list[str]) -> tuple[list[float], list[float]]:
    """A bucket's share of the fleet's seasonal profile, from its verified odometer readings
    (four narrow columns read; a bucket holds whole vehicles, so the shares add up to the fleet's)."""
    tables = [
        pq.read_table(
            f,
            columns=["vehicle", "event_time", "odometer_km", "verification"],
            schema=MASTER_SCHEMA,
            partitioning=None,
        ).replace_schema_metadata(None)
        for f in files
    ]
    if not tables:
        return [0.0] * 12, [0.0] * 12
    table = pa.concat_tables(tables)
    keep = pc.and_(pc.is_valid(table["odometer_km"]), pc.equal(table["verification"], "verified"))
    return profile_table_sums(table.filter(keep).select(["vehicle", "event_time", "odometer_km"]))


def bucket_file_name(bucket: int) -> str:
    return f"bucket-{bucket:03d}.parquet"


@dataclass(frozen=True)
class BucketTask:
    bucket: int
    files: list[str]  # the bucket's master files
    out: str  # the new version's directory
    previous: str | None = None  # the previous version's directory (incremental), else None
    redo: list[str] | None = None  # vehicles to redo (None: every vehicle of the bucket)
    #: (event id, vehicle) rows left out: ids another vehicle keeps (:mod:`batch.reused`)
    set_aside: tuple[tuple[str, str], ...] = ()
    #: the audit's per-file counts to make over each view file written (:func:`batch.audit.file_checks`)
    checks: FileChecks = ()
    #: write the bucket's producer sums with this lag (:mod:`batch.views.sources`); None: none written
    timely_lag_s: int | None = None


def read_bucket(
    files: list[str], columns_filter: list[str] | None = None, set_aside: tuple[tuple[str, str], ...] = ()
) -> pa.Table:
    """A bucket's rows (optionally only some vehicles, less the ``set_aside`` rows), in file order: a
    bucket of several files is not clustered by vehicle (:func:`run_bucket_task` annotates it whole,
    which orders it)."""
    tables = []
    for f in files:
        t = pq.read_table(f, schema=MASTER_SCHEMA, partitioning=None).replace_schema_metadata(None)
        if columns_filter is not None:
            t = t.filter(pc.is_in(t["vehicle"], value_set=pa.array(columns_filter, pa.string())))
        if set_aside:
            pairs = pa.array([f"{e}\x00{v}" for e, v in set_aside], pa.string())
            keys = pc.binary_join_element_wise(t["event_id"], t["vehicle"], "\x00")
            t = t.filter(pc.invert(pc.is_in(keys, value_set=pairs)))
        tables.append(t)
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _ms(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column.cast(pa.timestamp("ms", tz="UTC"))


def project_history(annotated: pa.Table) -> pa.Table:
    return annotated.select(HISTORY_COLUMNS)


def project_mileage(annotated: pa.Table) -> pa.Table:
    return annotated.filter(pc.is_valid(annotated["odometer_km"])).select(MILEAGE_COLUMNS)


def project_scores(annotated: pa.Table) -> pa.Table:
    """One row per vehicle: its verdict (the pass puts it on the vehicle's last row)."""
    last = annotated.filter(pc.is_valid(annotated["v_score"]))
    reasons = [json.loads(r) for r in last["v_reasons"].to_pylist()]
    return pa.table(
        {
            "vehicle": last["vehicle"],
            "score": last["v_score"],
            "label": last["v_label"],
            "reasons": pa.array(reasons, pa.list_(_REASON)),
            "flags": pa.array([sorted(r["flag"] for r in rs) for rs in reasons], pa.list_(pa.string())),
            "explanation": pa.array(
                [json.loads(e) for e in last["v_explanation"].to_pylist()], pa.list_(pa.string())
            ),
            "events": last["seq"].cast(pa.int64()),
            "last_event_time": _ms(last["event_time"]),
            "duplicates": last["v_duplicates"],
        },
        schema=SCORES_SCHEMA,
    )


#: Columns whose values are (nearly) unique per row: a dictionary page would be built, then abandoned
#: (a fifth of a ``vehicle_history`` file's write time, and its files 11 % larger).
UNIQUE_COLUMNS = frozenset({"event_id", "payload", "leaf_hash", "root", "proof_path", "flag_evidence"})


def _write(table: pa.Table, path: Path) -> None:
    dictionary = [c for c in table.column_names if c not in UNIQUE_COLUMNS]
    atomic_write(
        path,
        lambda fh: pq.write_table(
            table, fh, compression="zstd", row_group_size=100_000, use_dictionary=dictionary
        ),
    )


def _kept(previous: Path, redo: pa.Array) -> pa.Table | None:
    """The previous version's rows of a view file, less the vehicles being redone."""
    if not previous.exists():
        return None
    old = pq.read_table(previous, partitioning=None)
    return old.filter(pc.invert(pc.is_in(old["vehicle"], value_set=redo)))


#: Where a bucket task leaves the event-id digests of the files it wrote, inside the new version
#: (megabytes a bucket: through Spark's collect they cost the JVM a second of work and a gigabyte of
#: heap at 10M events); the run reads them back for the audit and removes the directory.
DIGESTS_DIR = ".audit-digests"


def count_written(
    task: BucketTask, view: str, target: Path
) -> list[tuple[str, Any, Any, FileKeys, dict[int, str]]]:
    """The audit's counts over a view file this task wrote, read back from disk (its keys and row
    checks, :func:`batch.filekeys.file_keys`): the audit merges them instead of reading the file.
    The digests go to files of their own (:data:`DIGESTS_DIR`, named per key index in the last
    element); :func:`with_digests` puts them back."""
    made = []
    for v, keys, rows in task.checks:
        if v != view:
            continue
        counts = file_keys(str(target), keys, rows)
        moved: dict[int, str] = {}
        for i, found in enumerate(counts.digests):
            if found:
                side = Path(task.out) / DIGESTS_DIR / f"{view}.{target.stem}.{i}.u64"
                side.parent.mkdir(parents=True, exist_ok=True)
                side.write_bytes(found)
                moved[i] = str(side)
        light = tuple(b"" if i in moved else d for i, d in enumerate(counts.digests))
        made.append((str(target), keys, rows, dataclasses.replace(counts, digests=light), moved))
    return made


def with_digests(counts: FileKeys, moved: dict[int, str]) -> FileKeys:
    """``counts`` with the digests :func:`count_written` left in files read back (``OSError`` if one
    is missing: the audit then reads the view file itself)."""
    back = tuple(Path(moved[i]).read_bytes() if i in moved else d for i, d in enumerate(counts.digests))
    return dataclasses.replace(counts, digests=back)


def run_bucket_task(task: BucketTask, engine: RuleEngine) -> dict[str, Any]:
    """Annotate the task's vehicles and write the bucket's three per-vehicle view files."""
    table = read_bucket(task.files, task.redo, task.set_aside)
    # the whole bucket at once: annotate_table orders it (vehicle, then the rules' order) in one sort
    annotated = annotate_table(table, engine) if table.num_rows else None
    fresh = {
        "vehicle_history": project_history,
        "mileage_timeline": project_mileage,
        "fraud_scores": project_scores,
    }
    redo = pa.array(task.redo or [], pa.string())
    rows: dict[str, int] = {}
    counted: list[tuple[str, Any, Any, FileKeys, dict[int, str]]] = []
    history: pa.Table | None = None
    for view, project in fresh.items():
        pieces = [project(annotated)] if annotated is not None else []
        if task.previous is not None and task.redo is not None:
            kept = _kept(Path(task.previous) / view / bucket_file_name(task.bucket), redo)
            if kept is not None:
                pieces.append(kept.cast(pieces[0].schema) if pieces else kept)
        pieces = [p for p in pieces if p.num_rows]
        target = Path(task.out) / view / bucket_file_name(task.bucket)
        if not pieces:
            rows[view] = 0
            continue
        merged = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
        keys = (
            [("vehicle", "ascending"), ("seq", "ascending")]
            if view != "fraud_scores"
            else [("vehicle", "ascending")]
        )
        if len(pieces) > 1:
            merged = merged.sort_by(keys)
        if view == "vehicle_history":
            history = merged
        _write(merged, target)
        counted += count_written(task, view, target)
        rows[view] = merged.num_rows
    if task.timely_lag_s is not None:  # what source_reputation needs of this bucket, while its rows are here
        sums = SUMS_SCHEMA.empty_table() if history is None else source_sums(history, task.timely_lag_s)
        write_sums(sums, sums_path(Path(task.out), task.bucket), task.timely_lag_s)
    vehicles = 0 if annotated is None else int(pc.count_distinct(annotated["vehicle"]).as_py())
    return {
        "bucket": task.bucket,
        "rows_in": table.num_rows,
        "vehicles_redone": vehicles,
        "history_rows": rows["vehicle_history"],
        "mileage_rows": rows["mileage_timeline"],
        "score_rows": rows["fraud_scores"],
        "file_keys": pickle.dumps(counted),
    }
