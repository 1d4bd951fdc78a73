"""Projecting the annotated master dataset into the four batch views and writing them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from batch.views.annotate import ADDED_DDL, PROFILE_SCHEMA, make_annotator, profile_partition
from pipelines.dataset import MASTER_COLUMNS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: About this many rows per vehicle range: one partition of the pass, cached whole, and one history file.
#: At 2M rows (~2 GB wide) two concurrent ranges ran a 3 GB driver out of heap at 10M events.
ROWS_PER_FILE = 500_000
REASONS_DDL = "array<struct<flag: string, evidence: array<string>>>"


def _partition_keys(spark: SparkSession, partitions: int) -> list[int]:
    """For each partition ``p``, an integer Spark's hash partitioner sends to ``p`` (so ``repartition``
    on it places rows exactly, without the sampling scan ``repartitionByRange`` needs)."""
    from pyspark.sql import functions as F

    target = F.pmod(F.hash("id"), F.lit(partitions)).alias("p")
    first: dict[int, int] = {}
    for row in spark.range(0, 64 * partitions).select("id", target).collect():
        first.setdefault(row["p"], row["id"])
    return [first[p] for p in range(partitions)]


def vehicle_ranges(master: DataFrame, partitions: int) -> DataFrame:
    """``master`` in ``partitions`` ranges of vehicle pseudonyms, each sorted by vehicle.

    Pseudonyms are ``v-`` + hex of a hash (docs/contracts.md), so their leading
    hex digits are uniform and ordered: range ``p`` holds the vehicles whose
    first six digits fall in the ``p``-th slice.  Any other vehicle string goes
    to the first range (still whole, only the layout is less tidy; the audit
    rejects such a pseudonym anyway).
    """
    from pyspark.sql import functions as F

    keys = _partition_keys(master.sparkSession, partitions)
    digits = F.conv(F.substring("vehicle", 3, 6), 16, 10).cast("long")
    bucket = F.least(F.floor(F.coalesce(digits, F.lit(0)) * partitions / 16**6), F.lit(partitions - 1))
    key = F.element_at(F.array(*[F.lit(k).cast("long") for k in keys]), bucket.cast("int") + 1)
    return master.repartition(partitions, key).sortWithinPartitions("vehicle")


def fleet_profile(master: DataFrame, partitions: int) -> tuple[float, ...]:
    """The fleet's km/day per twelfth of the year (:func:`pipelines.rules.fraud.fleet_profile`), from the
    verified odometer readings of the whole master dataset: gradual clocking compares a car's rates with it."""
    from pyspark.sql import functions as F

    from pipelines.rules.fraud import profile_from_sums

    readings = master.where("odometer_km IS NOT NULL AND verification = 'verified'").select(
        "vehicle", "event_time", "odometer_km"
    )
    sums = vehicle_ranges(readings, partitions).mapInArrow(profile_partition, PROFILE_SCHEMA)
    rows = {
        r["part"]: r
        for r in sums.groupBy("part").agg(F.sum("km").alias("km"), F.sum("days").alias("days")).collect()
    }
    return profile_from_sums(
        [rows[p]["km"] if p in rows else 0.0 for p in range(12)],
        [rows[p]["days"] if p in rows else 0.0 for p in range(12)],
    )


def annotate(
    master: DataFrame,
    partitions: int,
    profile: tuple[float, ...] | None = None,
) -> DataFrame:
    """Run the per-vehicle pass (rules, reconciliation, verdict) over the whole master dataset.

    One shuffle: ``partitions`` vehicle ranges (:func:`vehicle_ranges`)
    streamed through the Python pass in Arrow batches.  The result keeps that
    layout (a vehicle range per partition, rows by vehicle then ``seq``), so
    the views are written without another shuffle.  ``profile``: the fleet's
    (:func:`fleet_profile`), measured on ``master`` when not given; a run over
    some vehicles only should pass the whole fleet's, so that it agrees with a full rebuild.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, StringType, StructType

    # list columns cross to Python as JSON text: Spark's Arrow writer sizes list vectors row by
    # row, which made the transfer of the master to the pass about twice as slow
    lists = [f.name for f in master.schema.fields if isinstance(f.dataType, ArrayType)]
    flat = master.select(*[F.to_json(c).alias(c) if c in lists else F.col(c) for c in master.columns])
    added = StructType.fromDDL(ADDED_DDL)
    assert isinstance(added, StructType)
    schema = StructType(flat.schema.fields + added.fields)
    annotator = make_annotator(profile or fleet_profile(master, partitions))
    out = vehicle_ranges(flat, partitions).mapInArrow(annotator, schema)
    back = {
        f.name: F.from_json(f.name, ArrayType(StringType())).alias(f.name)
        for f in master.schema.fields
        if f.name in lists
    }
    return out.select(*[back.get(c, F.col(c)) for c in out.columns])


def vehicle_history(annotated: DataFrame) -> DataFrame:

    cols = [c for c in MASTER_COLUMNS if c != "vehicle"]
    return annotated.select(
        "vehicle",
        "seq",
        *cols,
        "batch_flags",
        "flag_evidence",
    )


def mileage_timeline(annotated: DataFrame) -> DataFrame:
    return annotated.where("odometer_km IS NOT NULL").select(
        "vehicle",
        "seq",
        "event_id",
        "event_time",
        "event_type",
        "source_id",
        "source_kind",
        "verification",
        "quality",
        "odometer_km",
        "reconciled_km",
        "is_outlier",
        "outlier_reason",
    )


def fraud_scores(annotated: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    reasons = F.from_json("v_reasons", REASONS_DDL)
    return annotated.where("v_score IS NOT NULL").select(
        "vehicle",
        F.col("v_score").alias("score"),
        F.col("v_label").alias("label"),
        reasons.alias("reasons"),
        F.array_sort(F.transform(reasons, lambda r: r["flag"])).alias("flags"),
        F.from_json("v_explanation", "array<string>").alias("explanation"),
        F.col("seq").cast("long").alias("events"),
        F.col("event_time").alias("last_event_time"),
        F.col("v_duplicates").alias("duplicates"),
    )


def source_reputation(history: DataFrame, timely_lag_s: int) -> DataFrame:
    """Per producer, from ``vehicle_history``: shares of verified, consistent (no batch fraud flag) and timely events."""
    from pyspark.sql import functions as F

    verified = (F.col("verification") == "verified").cast("double")
    consistent = (F.size("batch_flags") == 0).cast("double")
    lag_s = F.col("ingestion_time").cast("long") - F.col("event_time").cast("long")
    timely = (lag_s <= timely_lag_s).cast("double")
    out = history.groupBy("source_id").agg(
        F.count(F.lit(1)).alias("events"),
        F.avg(verified).alias("verified_share"),
        F.avg(consistent).alias("consistent_share"),
        F.avg(timely).alias("timely_share"),
        F.avg("quality").alias("mean_quality"),
        F.min("event_time").alias("first_event_time"),
        F.max("event_time").alias("last_event_time"),
    )
    reputation = (F.col("verified_share") + F.col("consistent_share") + F.col("timely_share")) / 3.0
    # a few thousand producers at most: one file, sorted
    return out.withColumn("reputation", reputation).coalesce(1).sortWithinPartitions("source_id")


def partitions_for(rows: int, cores: int) -> int:
    """How many vehicle ranges (history files) a run uses: a multiple of the cores, about
    :data:`ROWS_PER_FILE` rows each, at least two per core so a slow range does not idle a core."""
    per_core = max(2, -(-rows // (ROWS_PER_FILE * max(1, cores))))
    return max(1, cores) * per_core


def write_view(df: DataFrame, path: Path, files: int | None = None, sort: list[str] | None = None) -> None:
    """Write a view as Parquet, range-partitioned and sorted on its key.

    By default the frame already has that layout (the pass's vehicle ranges)
    and is written as is, one file per partition, or coalesced to ``files``
    (neighbouring ranges merged, so the order holds).  With ``sort`` (e.g. a
    union of fresh and carried-over rows) it is range-partitioned into
    ``files`` and sorted first.
    """
    if sort is not None:
        df = df.repartitionByRange(files or 1, sort[0]).sortWithinPartitions(*sort)
    elif files is not None:
        df = df.coalesce(files)
    df.write.mode("errorifexists").parquet(str(path))


#: Each view's sort key (the first column is its range-partitioning key).
SORT_KEYS: dict[str, list[str]] = {
    "vehicle_history": ["vehicle", "seq"],
    "mileage_timeline": ["vehicle", "seq"],
    "fraud_scores": ["vehicle"],
    "source_reputation": ["source_id"],
}
