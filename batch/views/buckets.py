"""The per-vehicle pass over a master dataset laid out in vehicle buckets: no shuffle.

A bucket holds whole vehicles (``pipelines.dataset``), so each Spark task
takes whole buckets (a few tasks per core, :func:`groups`): its Python worker
reads each bucket's files with pyarrow, annotates them and writes the bucket's
view files itself (:mod:`batch.views.bucket_views`); Spark gets back one
summary row per bucket.  The plan is ``Range -> MapInArrow``: the wide rows (payloads, hashes,
proofs) never cross into the JVM and are never shuffled.  Every file of a
version is named after its bucket, so an unchanged bucket's files are carried
into the next version by reference (:mod:`batch.incremental`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import pyarrow as pa

from batch.rules import RuleEngine, load_engine
from batch.views.bucket_views import SUMMARY_SCHEMA, BucketTask, bucket_profile_sums, run_bucket_task

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row, SparkSession

T = TypeVar("T")

SUMMARY_DDL = (
    "bucket int, rows_in bigint, vehicles_redone bigint, history_rows bigint, mileage_rows bigint, "
    "score_rows bigint, file_keys binary"
)


PROFILE_DDL = "bucket int, part int, km double, days double"


#: Spark tasks per core of the cluster for a pass over buckets: a few, so a slow group does not idle a core.
GROUPS_PER_CORE = 2


def groups(spark: SparkSession, items: int) -> int:
    """How many Spark tasks share ``items`` buckets: ``GROUPS_PER_CORE`` per core of the cluster, at most
    one per bucket.  Each Spark task costs about 30 ms on top of its work (Python worker, Arrow
    stream); at one task per bucket, 64 near-empty tasks cost 2.1 s where 4 cost 0.3 s."""
    return max(1, min(items, GROUPS_PER_CORE * max(1, spark.sparkContext.defaultParallelism)))


def make_bucket_runner(
    tasks: list[BucketTask], profile: tuple[float, ...] | None = None, n_groups: int | None = None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function given to ``mapInArrow`` over group numbers: group ``g`` runs ``tasks[g::n_groups]``
    (one per Spark task without ``n_groups``) with the rules under the fleet's seasonal ``profile``."""
    cache: dict[str, RuleEngine] = {}
    step = n_groups or len(tasks)

    def _apply(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        engine = cache.get("engine")
        if engine is None:
            engine = cache["engine"] = load_engine(fleet_profile=profile)
        for batch in batches:
            for g in batch.column(0).to_pylist():
                for task in tasks[g::step]:
                    summary = run_bucket_task(task, engine)
                    yield pa.RecordBatch.from_pylist([summary], schema=SUMMARY_SCHEMA)

    return _apply


def bucket_pass(
    spark: SparkSession,
    tasks: list[BucketTask],
    profile: tuple[float, ...] | None = None,
) -> DataFrame:
    """A few Spark tasks per core (:func:`groups`), each running its share of the bucket tasks;
    collecting the frame runs them (a row per bucket comes back)."""
    n = groups(spark, len(tasks))
    numbers = spark.range(0, n, 1, numPartitions=n)
    return numbers.mapInArrow(make_bucket_runner(tasks, profile, n), SUMMARY_DDL)


def collect_over_groups(
    spark: SparkSession, items: Sequence[T], task: Callable[[T], pa.RecordBatch], ddl: str
) -> list[Row]:
    """``task`` of every item in a few Spark tasks per core (:func:`groups`), each taking
    ``items[g::n]``; nothing is shuffled, the rows (schema ``ddl``) come back to the driver."""
    n = groups(spark, len(items))

    def _apply(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for g in batch.column(0).to_pylist():
                for item in items[g::n]:
                    yield task(item)

    return spark.range(0, n, 1, numPartitions=n).mapInArrow(_apply, ddl).collect()


def profile_pass(
    spark: SparkSession, bucket_files: dict[int, list[str]]
) -> dict[int, tuple[list[float], list[float]]]:
    """Each bucket's share of the fleet's seasonal profile (:func:`bucket_profile_sums`), a few Spark
    tasks per core reading four narrow columns; nothing is shuffled."""
    if not bucket_files:
        return {}
    buckets = sorted(bucket_files)

    def _sums(bucket: int) -> pa.RecordBatch:
        km, days = bucket_profile_sums(bucket_files[bucket])
        return pa.RecordBatch.from_pydict(
            {
                "bucket": pa.array([bucket] * 12, pa.int32()),
                "part": pa.array(range(12), pa.int32()),
                "km": pa.array(km, pa.float64()),
                "days": pa.array(days, pa.float64()),
            }
        )

    out: dict[int, tuple[list[float], list[float]]] = {b: ([0.0] * 12, [0.0] * 12) for b in buckets}
    for row in collect_over_groups(spark, buckets, _sums, PROFILE_DDL):
        out[row["bucket"]][0][row["part"]] = row["km"]
        out[row["bucket"]][1][row["part"]] = row["days"]
    return out
