"""Event ids carried by more than one vehicle: the first one keeps the id, the others' rows are set aside.

An event id names one event across the platform (the serving layer's real-time
table, proofs and metering key on it), and the views must hold it once.  The
speed layer refuses an id it has accepted before, but only within
``speed.dedupe_window_s``: a producer that sends an id again, for another
vehicle, after that window gets it into the master dataset.  The batch pass
deduplicates per vehicle, so such a row would reach ``vehicle_history`` twice
and fail the audit's uniqueness check on every run from then on: one member
could stop the batch layer from publishing for everyone.

Each run therefore looks for ids under more than one vehicle (one aggregate
over hashes of two narrow columns of the master, normally empty).  The vehicle of the
first row accepted (lowest ``processed_time``, then Kafka topic, partition,
offset) keeps the id, as the real-time view keeps the first row it loads; the
rows of every other vehicle with that id are left out of the views and listed
in the run record (``set_aside``), with the vehicle that kept it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

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
    out = ReusedIds()
    if not hashes:
        return out
    found = spark.createDataFrame([(h,) for h in hashes], "h bigint")
    order = ["processed_time", "topic", "partition", "offset", "vehicle"]
    rows = (
        master.withColumn("h", F.xxhash64("event_id"))
        .join(F.broadcast(found), "h", "left_semi")
        .select("event_id", *order)
        .orderBy("event_id", *order)
        .collect()
    )
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
