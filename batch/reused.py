"""Event ids carried by more than one vehicle: the first one keeps the id, the others' rows are set aside.

An event id names one event across the platform (the serving layer's real-time
table, proofs and metering key on it), and the views must hold it once.  The
speed layer refuses an id it has accepted before, but only within
``speed.dedupe_window_s``: a producer that sends an id again, for another
vehicle, after that window gets it into the master dataset.  The batch pass
deduplicates per vehicle, so such a row would reach ``vehicle_history`` twice
and fail the audit's uniqueness check on every run from then on: one member
could stop the batch layer from publishing for everyone.

Each run therefore looks for ids under more than one vehicle: in a master in
vehicle buckets, each bucket's id digests compared in the driver
(:func:`find_reused_ids_in_buckets`, no shuffle); in the date layout, one
aggregate over hashes of two narrow columns (:func:`find_reused_ids`).  The vehicle of the
first row accepted (lowest ``processed_time``, then Kafka topic, partition,
offset) keeps the id, as the real-time view keeps the first row it loads; the
rows of every other vehicle with that id are left out of the views and listed
in the run record (``set_aside``), with the vehicle that kept it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch.filekeys import digests

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: The master's columns the search reads.
REUSED_COLUMNS = ("event_id", "vehicle", "processed_time", "topic", "partition", "offset")
#: How many set-aside ids a run record lists by name (all are counted).
LISTED = 100


@dataclass
class ReusedIds:
    """The ids carried by several vehicles, which vehicle keeps each, and the rows left out."""

    kept: dict[str, str] = field(default_factory=dict)  # event id -> the vehicle that keeps it
    rows: dict[tuple[str, str], int] = field(default_factory=dict)  # (event id, vehicle) -> rows set aside

    @property
    def set_aside_rows(self) -> int:
        return sum(self.rows.values())

    def pairs(self) -> list[tuple[str, str]]:
        """The (event id, vehicle) pairs whose rows are left out, sorted."""
        return sorted(self.rows)

    def record(self) -> list[dict[str, Any]]:
        """What the run record lists (the first :data:`LISTED` ids)."""
        return [
            {
                "event_id": e,
                "vehicle": v,
                "kept_by": self.kept[e],
                "rows": n,
                "reason": "event id of another vehicle",
            }
            for (e, v), n in sorted(self.rows.items())[:LISTED]
        ]


def find_reused_ids(master: DataFrame) -> ReusedIds:
    """Ids under more than one vehicle in ``master`` (the master dataset's columns), with who keeps each.

    One aggregate by the id's 64-bit hash over the vehicles' hashes (a hash whose
    smallest and largest vehicle differ): longs only, 8 s at 10M events where the
    same aggregate over the strings took 21 s.  The rows of the few hashes found
    are then read exactly and grouped by the id itself, so two ids sharing a
    hash are never taken for one.
    """
    from pyspark.sql import functions as F

    spark = master.sparkSession
    spark.sparkContext.setJobDescription("pcc batch: event ids of more than one vehicle")
    hashes = [
        r["h"]
        for r in master.select(F.xxhash64("event_id").alias("h"), F.xxhash64("vehicle").alias("v"))
        .groupBy("h")
        .agg(F.min("v").alias("lo"), F.max("v").alias("hi"))
        .where(F.col("lo") != F.col("hi"))
        .select("h")
        .collect()
    ]
    if not hashes:
        return ReusedIds()
    found = spark.createDataFrame([(h,) for h in hashes], "h bigint")
    order = list(_FIRST)
    rows = (
        master.withColumn("h", F.xxhash64("event_id"))
        .join(F.broadcast(found), "h", "left_semi")
        .select("event_id", *order)
        .orderBy("event_id", *order)
        .collect()
    )
    return decide(rows)


def decide(rows: list[Any]) -> ReusedIds:
    """Who keeps each id, from every row of the candidate ids sorted by ``(event_id, processed_time,
    topic, partition, offset, vehicle)``: the first row's vehicle keeps it (ids under one vehicle only
    are left alone)."""
    out = ReusedIds()
    vehicles: dict[str, set[str]] = {}
    for r in rows:
        vehicles.setdefault(r["event_id"], set()).add(r["vehicle"])
    for r in rows:
        if len(vehicles[r["event_id"]]) < 2:
            continue  # an id that only shares its hash with another
        kept = out.kept.setdefault(r["event_id"], r["vehicle"])  # the first row of the id keeps it
        if r["vehicle"] != kept:
            key = (r["event_id"], r["vehicle"])
            out.rows[key] = out.rows.get(key, 0) + 1
    return out


#: Columns sorted on to pick the row that keeps an id (after ``event_id``).
_FIRST = ("processed_time", "topic", "partition", "offset", "vehicle")
IDS_DDL = "bucket int, ids binary, shared binary"


Digest = Callable[[pa.ChunkedArray], np.ndarray]


def bucket_ids(files: Sequence[str], digest: Digest = digests) -> tuple[np.ndarray, np.ndarray]:
    """A bucket's distinct event-id digests (sorted), and the digests of the ids it holds under more
    than one vehicle (:func:`batch.filekeys.digests`; two narrow columns read)."""
    tables = [pq.read_table(f, columns=["event_id", "vehicle"], partitioning=None) for f in files]
    if not tables:
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    table = pa.concat_tables(tables)
    ids = digest(pc.fill_null(table["event_id"], ""))
    cars = pc.dictionary_encode(pc.fill_null(table["vehicle"], "")).combine_chunks().indices.to_numpy()
    order = np.argsort(ids, kind="stable")  # an id's run holds two cars iff two neighbours in it differ
    ids, cars = ids[order], cars[order]
    same = ids[1:] == ids[:-1]
    distinct = ids[np.concatenate(([True], ~same))] if len(ids) else ids
    return distinct, np.unique(ids[1:][same & (cars[1:] != cars[:-1])])


def find_reused_ids_in_buckets(spark: SparkSession, bucket_files: dict[int, list[Path]]) -> ReusedIds:
    """:func:`find_reused_ids` for a master in vehicle buckets, without a shuffle.

    Each bucket gives, in a Spark task of a few, the sorted digests of its distinct ids and those
    of ids it holds under two vehicles; a digest in two buckets' lists, or in a list of the latter,
    is a candidate. Only the rows of candidates are then read (the driver, the candidate buckets'
    files) and decided exactly by the ids themselves (:func:`decide`), so two ids sharing a digest
    are never taken for one and an id repeated anywhere is never missed (equal ids, equal digests).
    A master without repeats costs a pass over two narrow columns: 3.6-4.1 s at 10M events on two
    cores, where the shuffle of :func:`find_reused_ids` took 6.7-7.4 s (same session, warm).
    """
    from batch.views.buckets import collect_over_groups

    buckets = sorted(bucket_files)
    if not buckets:
        return ReusedIds()
    spark.sparkContext.setJobDescription(
        f"pcc batch: event ids of more than one vehicle, {len(buckets)} buckets"
    )

    def _ids(bucket: int) -> pa.RecordBatch:
        distinct, shared = bucket_ids([str(f) for f in bucket_files[bucket]])
        return pa.RecordBatch.from_pydict(
            {
                "bucket": pa.array([bucket], pa.int32()),
                "ids": pa.array([distinct.tobytes()], pa.binary()),
                "shared": pa.array([shared.tobytes()], pa.binary()),
            }
        )

    found = {r["bucket"]: (r["ids"], r["shared"]) for r in collect_over_groups(spark, buckets, _ids, IDS_DDL)}
    lists = {b: np.frombuffer(bytes(found[b][0]), np.uint64) for b in buckets}
    shared = [np.frombuffer(bytes(found[b][1]), np.uint64) for b in buckets]
    return decide_candidates(bucket_files, lists, shared)


def decide_candidates(
    bucket_files: dict[int, list[Path]],
    lists: dict[int, np.ndarray],
    shared: list[np.ndarray],
    digest: Digest = digests,
) -> ReusedIds:
    """The candidates of :func:`find_reused_ids_in_buckets` (digests in two buckets' ``lists``, or in
    ``shared``), decided by reading their rows (``digest`` must be the one the lists were made with)."""
    every = np.sort(np.concatenate(list(lists.values()))) if lists else np.empty(0, np.uint64)
    across = every[1:][every[1:] == every[:-1]]
    candidates = np.unique(np.concatenate([across, *shared]))
    if not len(candidates):
        return ReusedIds()
    rows: list[dict[str, Any]] = []
    for b in sorted(lists):
        if not np.isin(lists[b], candidates).any():
            continue
        for f in bucket_files[b]:
            table = pq.read_table(f, columns=list(REUSED_COLUMNS), partitioning=None)
            hit = np.isin(digest(pc.fill_null(table["event_id"], "")), candidates)
            rows.extend(table.filter(pa.array(hit)).to_pylist())
    rows.sort(key=lambda r: (r["event_id"], *(r[c] for c in _FIRST)))
    return decide(rows)
