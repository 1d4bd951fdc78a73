"""The batch layer's entry module: one run of write-audit-publish.

``run_batch`` scans the master dataset (quarantining bad files), runs the
per-vehicle pass once (rules, reconciliation, verdicts), writes the four views
as a new version, audits them with the stored Great Expectations suites and
only then publishes the version by swapping ``CURRENT.json``.  A failed audit
leaves the previous version published and raises :class:`AuditFailedError`
saying why.  Every run, whatever its outcome, is recorded in the run history.

Re-running over the same input gives the same rows.  Without ``full``, a run
whose input (the master files, by name/size/rows) is unchanged since the
published version does nothing.  Over a master in vehicle buckets a run is
incremental by default (:mod:`batch.incremental`): unchanged buckets are
carried over by reference, buckets that gained files redo only the vehicles in
them.  Over a master still in the date layout, ``since`` redoes only vehicles
that received events processed at or after that time.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.audit import AuditResult, audit_views
from batch.config import VIEWS, BatchConfig
from batch.errors import AuditFailedError, BatchError
from batch.incremental import (
    BucketPlan,
    apply_set_aside,
    plan_buckets,
    reference_profile,
    settle_profile,
    write_version,
)
from batch.layout import compact_master
from batch.master import MasterScan, read_master, scan_master
from batch.publish import iso_ms, manifest, new_version, publish, read_current, store_manifest, utc_now
from batch.retention import prune_versions
from batch.reused import REUSED_COLUMNS, ReusedIds, find_reused_ids, find_reused_ids_in_buckets
from batch.runs import RunRecord, append_run, run_lock
from batch.session import get_spark, require_gx
from batch.views import build
from batch.views.bucket_views import PER_VEHICLE_VIEWS, bucket_file_name
from pipelines.dataset import read_layout
from pipelines.layout import BatchManifest

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: ``progress(stage, step, steps)``: called as a run moves from one stage to the next.
ProgressCallback = Callable[[str, int, int], None]
STAGES = (
    "scan master dataset",
    "rules pass",
    *(f"write {v}" for v in VIEWS),
    "audit",
    "publish",
)


def _noop(stage: str, step: int, steps: int) -> None:
    return None


def watermark(files: list[Path]) -> dict[str, Any]:
    """Up to where a version covers the master dataset: processed/event time, events, Kafka offsets.

    Read with pyarrow from the accepted files (five narrow columns, one file
    at a time), not by Spark: no second scan of the whole dataset.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    columns = ["topic", "partition", "offset", "processed_time", "event_time"]
    offsets: dict[tuple[str, int], int] = {}
    latest: dict[str, datetime | None] = {"processed_time": None, "event_time": None}
    events = 0
    for file in files:
        table = pq.read_table(file, columns=columns, partitioning=None)
        if table.num_rows == 0:
            continue
        events += table.num_rows
        for r in table.group_by(["topic", "partition"]).aggregate([("offset", "max")]).to_pylist():
            key = (r["topic"], r["partition"])
            offsets[key] = max(offsets.get(key, r["offset_max"]), r["offset_max"])
        for name, seen in latest.items():
            top = pc.max(table[name]).as_py()
            latest[name] = top if seen is None or top > seen else seen
    return {
        "processed_time": iso_ms(latest["processed_time"]),
        "event_time": iso_ms(latest["event_time"]),
        "events": events,
        "offsets": {f"{t}[{p}]": int(o) for (t, p), o in sorted(offsets.items())},
    }


def _build(annotated: DataFrame, timely_lag_s: int) -> dict[str, DataFrame]:
    history = build.vehicle_history(annotated)
    return {
        "vehicle_history": history,
        "mileage_timeline": build.mileage_timeline(annotated),
        "fraud_scores": build.fraud_scores(annotated),
        "source_reputation": build.source_reputation(history, timely_lag_s),
    }


def _broadcast(df: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return F.broadcast(df)


def _touched(master: DataFrame, since: datetime) -> DataFrame:
    """The vehicles with at least one event processed at or after ``since``."""
    from pyspark.sql import functions as F

    return master.where(F.col("processed_time") >= F.lit(since)).select("vehicle").distinct()


def _carry_over(
    spark: SparkSession,
    config: BatchConfig,
    fresh: dict[str, DataFrame],
    current: BatchManifest,
    touched: DataFrame,
) -> dict[str, DataFrame]:
    """Fresh rows for the touched vehicles, the published version's rows for every other vehicle."""
    views: dict[str, DataFrame] = {}
    for view in ("vehicle_history", "mileage_timeline", "fraud_scores"):
        previous = spark.read.parquet(str(current.view_dirs(config.batch_dir)[view]))
        kept = previous.join(_broadcast(touched), "vehicle", "left_anti")
        views[view] = fresh[view].unionByName(kept)
    views["source_reputation"] = build.source_reputation(views["vehicle_history"], config.timely_lag_s)
    return views


def _parameters(
    scan: MasterScan, paths: dict[str, Path], carried: list[int] | None = None, set_aside: int = 0
) -> dict[str, int]:
    """What the audit reconciles with, counted from the Parquet footers and the written views.

    ``carried``: the buckets carried over by reference; their vehicles are counted from the
    footers of their ``fraud_scores`` files (one row per vehicle, audited when written), the
    others by the audit's own scan of the fresh ``vehicle_history`` files.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with_km = 0
    for file in scan.files:
        meta = pq.read_metadata(file)
        col = meta.schema.to_arrow_schema().get_field_index("odometer_km")
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            stats = rg.column(col).statistics
            nulls = stats.null_count if stats is not None and stats.has_null_count else None
            if nulls is None:  # no statistics: count the column itself
                nulls = pq.ParquetFile(file).read_row_group(g, columns=["odometer_km"]).column(0).null_count
            with_km += rg.num_rows - nulls
    scores = pq.read_table(paths["fraud_scores"], columns=["duplicates"])  # one row per vehicle: small
    duplicates = int(pc.sum(scores["duplicates"]).as_py() or 0)
    carried_files = [paths["fraud_scores"] / bucket_file_name(b) for b in carried or []]
    return {
        "history_rows": scan.rows - duplicates - set_aside,
        "mileage_rows_min": max(0, with_km - duplicates - set_aside),
        "mileage_rows_max": with_km,
        "vehicles_carried": sum(pq.read_metadata(f).num_rows for f in carried_files if f.exists()),
        "duplicates": duplicates,
    }


def _written(out: Path, plan: BucketPlan) -> dict[str, list[Path]]:
    """The per-vehicle view files this run wrote (not the ones linked from the previous version)."""
    buckets = sorted([*plan.whole, *plan.partial])
    return {
        view: [f for f in (out / view / bucket_file_name(b) for b in buckets) if f.exists()]
        for view in PER_VEHICLE_VIEWS
    }


def run_batch(  # noqa: PLR0915 (a run's stages in order, in one place)
    config: BatchConfig,
    *,
    full: bool = False,
    since: datetime | None = None,
    spark: SparkSession | None = None,
    progress: ProgressCallback | None = None,
) -> RunRecord:
    """One batch run; returns its record (also appended to the run history).

    Raises :class:`AuditFailedError` when the audit blocks the publish, after
    recording the run.
    """
    step = progress or _noop
    n = len(STAGES)
    started = utc_now()
    t0 = time.perf_counter()
    record = RunRecord(run_id="", version="", started=iso_ms(started) or "", spark_master=config.master)
    timings: dict[str, float] = {}

    def stage(i: int, name: str) -> None:
        timings[name] = round(time.perf_counter() - t0, 3)
        step(name, i, n)

    with run_lock(config):
        try:
            stage(0, STAGES[0])
            if read_layout(config.master_dataset) is not None:  # a bucket of many small files: one large
                record.compacted = compact_master(config.master_dataset, config.compact_files).files_in
            scan = scan_master(config.master_dataset)
            record.master = str(config.master_dataset)
            record.fingerprint = scan.fingerprint
            record.rows_in = scan.rows
            record.quarantined = [q.__dict__ for q in scan.quarantined]
            current = read_current(config)
            if scan.misplaced:  # a bucket file holding another bucket's rows: nothing is computed
                record.version = record.run_id = new_version(started, scan.fingerprint)
                failures = [f"master dataset: {m.file} {m.reason}" for m in scan.misplaced]
                record.status = "audit_failed"
                record.error = "; ".join(failures)
                _finish(config, record, t0, timings)
                raise AuditFailedError(record.version, failures)
            if (
                not full
                and since is None
                and current is not None
                and current.input is not None
                and current.input.fingerprint == scan.fingerprint
            ):
                record.version = record.run_id = current.version
                record.status = "up_to_date"
                record.published = True
                record.watermark = current.watermark.model_dump()
                return _finish(config, record, t0, timings)
            version = new_version(started, scan.fingerprint)
            record.version = record.run_id = version
            out = config.version_dir(version)
            if spark is None:
                spark = get_spark(config.master, config.driver_memory, config.shuffle_partitions)
            record.spark_master = spark.sparkContext.master or ""
            reused = (
                find_reused_ids_in_buckets(spark, scan.bucket_files)
                if scan.buckets is not None
                else find_reused_ids(read_master(spark, scan).select(*REUSED_COLUMNS))
            )
            record.set_aside = reused.record()
            layout: dict[str, Any] | None = None
            plan: BucketPlan | None = None
            profile: tuple[float, ...]
            if scan.buckets is not None:
                stage(1, STAGES[1])
                plan = plan_buckets(scan, current, config.batch_dir, full=full, since=since)
                settle_profile(spark, scan, plan, current, config.profile_tolerance)
                apply_set_aside(plan, reused)
                threading.Thread(target=_preload_gx, name="pcc-gx-import", daemon=True).start()
                layout = write_version(spark, scan, plan, out, config.timely_lag_s)
                for i, view in enumerate(VIEWS):
                    stage(2 + i, f"write {view}")
                mark, profile = watermark(scan.files), plan.profile
                record.buckets = {k: v for k, v in layout.items() if k not in ("files", "profile_sums")}
            else:
                mark, profile = _write_date_layout(
                    spark, config, scan, current, out, full, since, stage, reused
                )
            paths = {view: out / view for view in VIEWS}
            stage(2 + len(VIEWS), "audit")
            record.rows_out = {view: _parquet_rows(path) for view, path in paths.items()}
            params = _parameters(
                scan, paths, plan.carried if plan is not None else None, reused.set_aside_rows
            )
            written = _written(out, plan) if plan is not None else None
            audit = audit_views(
                paths,
                params,
                config.batch_dir / "audits" / version,
                spark,
                written,
                vehicle_files=plan is not None,
                prepared=plan.file_keys if plan is not None else None,
            )
            if len(scan.quarantined) > config.max_quarantined_files:
                audit.success = False
                audit.failures.insert(
                    0,
                    f"master dataset: {len(scan.quarantined)} files quarantined, more than "
                    f"batch.max_quarantined_files={config.max_quarantined_files}",
                )
            record.audit = audit.as_dict()
            record.watermark = mark
            stage(3 + len(VIEWS), "publish")
            doc = manifest(
                version,
                mark,
                {
                    "input": {"fingerprint": scan.fingerprint, "files": len(scan.files), "rows": scan.rows},
                    "quarantined": record.quarantined,
                    "rows": record.rows_out,
                    "fleet_profile": list(profile),
                    **({"layout": layout} if layout is not None else {}),
                },
            )
            _write_json(out / "_audit.json", {"parameters": audit.parameters, **audit.as_dict()})
            if not audit.success:
                record.status = "audit_failed"
                record.error = "; ".join(audit.failures)
                _finish(config, record, t0, timings)
                raise AuditFailedError(version, audit.failures, audit.docs)
            store_manifest(config, doc)
            publish(config, doc)
            record.status = "published"
            record.published = True
            record.pruned = prune_versions(config, config.keep_versions)
            return _finish(config, record, t0, timings)
        except AuditFailedError:
            raise
        except BaseException as exc:
            record.status = "failed"
            record.error = f"{type(exc).__name__}: {exc}"
            _finish(config, record, t0, timings)
            if record.version and isinstance(exc, Exception) and not isinstance(exc, BatchError):
                shutil.rmtree(config.version_dir(record.version), ignore_errors=True)
            raise


def _write_date_layout(
    spark: SparkSession,
    config: BatchConfig,
    scan: MasterScan,
    current: BatchManifest | None,
    out: Path,
    full: bool,
    since: datetime | None,
    stage: Callable[[int, str], None],
    reused: ReusedIds,
) -> tuple[dict[str, Any], tuple[float, ...]]:
    """The views of a master dataset still in the date layout: one shuffle into vehicle ranges.

    Returns the watermark and the fleet's seasonal profile the rules ran with; a
    run after late events redoes the touched cars only while that profile holds.
    """
    from pyspark import StorageLevel

    master = read_master(spark, scan)
    if reused.rows:  # ids another vehicle keeps: those rows are left out of every view
        aside = spark.createDataFrame(reused.pairs(), "event_id string, vehicle string")
        master = master.join(_broadcast(aside), ["event_id", "vehicle"], "left_anti")
    stage(1, STAGES[1])
    cores = spark.sparkContext.defaultParallelism
    partitions = build.partitions_for(scan.rows, cores)
    profile = build.fleet_profile(master, partitions)  # the whole fleet's, also when some cars are redone
    moved = False
    if current is not None and not full:  # the version's profile stays the reference while close
        previous = current.fleet_profile or ()
        profile, moved = reference_profile(previous, profile, config.profile_tolerance)
    incremental = since is not None and current is not None and not full and not moved
    touched = None
    if incremental:
        touched = _touched(master, since)  # type: ignore[arg-type]
        master = master.join(_broadcast(touched), "vehicle", "left_semi")
    # cached on disk, streamed block by block: kept in memory, two wide ranges (~0.5 GB each)
    # ran a 3 GB driver out of heap at 10M events, and at 1M disk was faster (39 s vs 50 s)
    annotated = build.annotate(master, partitions, profile).persist(StorageLevel.DISK_ONLY)
    views = _build(annotated, config.timely_lag_s)
    if incremental:
        views = _carry_over(spark, config, views, current, touched)  # type: ignore[arg-type]
    mark = watermark(scan.files)
    paths = {view: out / view for view in VIEWS}
    # GX takes seconds to import: load it while the driver only waits for Spark's writes
    threading.Thread(target=_preload_gx, name="pcc-gx-import", daemon=True).start()
    files: int | None
    for i, view in enumerate(VIEWS):
        stage(2 + i, f"write {view}")
        spark.sparkContext.setJobDescription(f"pcc batch {out.name}: write {view}")
        if incremental:  # fresh and carried-over rows: lay them out again
            files = partitions if view in ("vehicle_history", "mileage_timeline") else 1
            build.write_view(views[view], paths[view], files, build.SORT_KEYS[view])
        else:  # already in vehicle ranges, sorted: no shuffle
            files = None if view in ("vehicle_history", "mileage_timeline") else 1
            build.write_view(views[view], paths[view], files)
    annotated.unpersist()
    return mark, profile


def _preload_gx() -> None:
    with contextlib.suppress(Exception):  # the audit reports a missing GX itself
        require_gx()


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in path.glob("*.parquet"))


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")


def _finish(config: BatchConfig, record: RunRecord, t0: float, timings: dict[str, float]) -> RunRecord:
    record.ended = iso_ms(utc_now())
    record.duration_s = round(time.perf_counter() - t0, 3)
    record.timings_s = timings
    append_run(config, record)
    return record


def audit_result(config: BatchConfig, version: str) -> AuditResult | None:
    """The stored audit of a version, if it was audited."""
    path = config.version_dir(version) / "_audit.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    return AuditResult(
        doc["success"],
        doc["failures"],
        doc["checked"],
        doc.get("docs"),
        doc.get("tolerated", []),
        doc.get("scanned", {}),
    )
