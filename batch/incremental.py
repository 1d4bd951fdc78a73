"""A version of the views over a bucketed master dataset, recomputing only what changed.

A version's per-vehicle views hold one file per vehicle bucket
(``<view>/bucket-NNN.parquet``); its manifest records, per bucket, the master
files it was computed from.  The next run compares that with the master:

* a bucket whose files are the same is **carried over by reference**: its view
  files are hard links to the previous version's (no byte rewritten; the
  files are shared between versions and freed with the last one using them);
* a bucket that only gained files (the speed layer appended events) redoes
  **only the vehicles in the new files**, and keeps the previous version's
  rows of the others (read and written again, not recomputed);
* any other bucket (compacted, new, ``--full``, another bucket count) is
  recomputed whole.

Gradual clocking compares each car with the fleet's seasonal profile, a
function of the whole master dataset.  Each bucket's share of it is kept in
the manifest; a run measures the shares of the buckets that changed and adds
them up in bucket order, as a full rebuild does.  The version's profile is an
input recorded in its manifest (``fleet_profile``): while the measured one is
within ``batch.profile_tolerance`` of it, it stays the reference and the run
equals a full rebuild under that profile (``--full`` measures it afresh); once
the fleet's seasons moved further, every bucket is redone with the new one.

``source_reputation`` (a few thousand producers) adds up the producer sums each
bucket task left beside its views (:mod:`batch.views.sources`; a carried
bucket's are linked with its views), or, when one is missing, is aggregated by
Spark from the new version's ``vehicle_history`` (its narrow columns only).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch.audit import Prepared, file_checks
from batch.master import MasterScan
from batch.reused import ReusedIds
from batch.views import build
from batch.views.bucket_views import (
    DIGESTS_DIR,
    PER_VEHICLE_VIEWS,
    BucketTask,
    bucket_file_name,
    with_digests,
)
from batch.views.buckets import bucket_pass, profile_pass
from batch.views.sources import read_sums, reputation_from_sums, sums_path, write_reputation
from pipelines.dataset import bucket_of
from pipelines.layout import BatchManifest, version_dir
from pipelines.rules.fraud import profile_from_sums

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass
class BucketPlan:
    """What a run does with each bucket of the master dataset."""

    buckets: int
    whole: list[int] = field(default_factory=list)  # recomputed whole
    partial: dict[int, list[str]] = field(default_factory=dict)  # bucket -> the vehicles redone
    carried: list[int] = field(default_factory=list)  # linked from the previous version
    previous: Path | None = None  # the previous version's directory
    profile: tuple[float, ...] = (1.0,) * 12  # the fleet's seasonal profile (:func:`settle_profile`)
    profile_sums: dict[int, list[float]] = field(default_factory=dict)  # bucket -> 12 km then 12 days
    profile_moved: bool = False  # the measured profile left the previous version's: every bucket redone
    measured_profile: tuple[float, ...] = (1.0,) * 12  # the profile of the master as it is now
    #: bucket -> (event id, vehicle) rows left out: ids another vehicle keeps (:mod:`batch.reused`)
    set_aside: dict[int, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    #: the audit's counts over each view file the run wrote, made by the task that wrote it
    file_keys: Prepared = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        return {
            "buckets": self.buckets,
            "recomputed": len(self.whole),
            "partial": len(self.partial),
            "carried": len(self.carried),
            "vehicles_redone_in_partial": sum(len(v) for v in self.partial.values()),
            "profile_moved": int(self.profile_moved),
        }


def _vehicles(files: list[Path], since: datetime | None = None) -> set[str]:
    """Distinct vehicles of some master files (with ``since``: of their rows processed at or after it)."""
    out: set[str] = set()
    for f in files:
        cols = ["vehicle"] if since is None else ["vehicle", "processed_time"]
        t = pq.read_table(f, columns=cols, partitioning=None)
        if since is not None:
            t = t.filter(pc.greater_equal(t["processed_time"], pa.scalar(since, t["processed_time"].type)))
        out.update(pc.unique(t["vehicle"]).to_pylist())
    return out


def plan_buckets(
    scan: MasterScan, current: BatchManifest | None, batch_dir: Path, *, full: bool, since: datetime | None
) -> BucketPlan:
    assert scan.buckets is not None
    plan = BucketPlan(scan.buckets)
    layout = current.layout if current is not None else None
    usable = not full and current is not None and layout is not None and layout.buckets == scan.buckets
    if usable and current is not None:
        plan.previous = version_dir(batch_dir, current.version)
        if not all((plan.previous / v).is_dir() for v in PER_VEHICLE_VIEWS):
            usable, plan.previous = False, None
    before: dict[str, list[str]] = layout.files if usable and layout is not None else {}
    for bucket in sorted(scan.bucket_files):
        files = scan.bucket_files[bucket]
        names = {f.name for f in files}
        old = set(before.get(str(bucket), []))
        if not usable or not old or not old <= names:
            plan.whole.append(bucket)
            continue
        redo = _vehicles([f for f in files if f.name not in old])
        if since is not None:
            redo |= _vehicles(files, since)
        if redo:
            plan.partial[bucket] = sorted(redo)
        else:
            plan.carried.append(bucket)
    return plan


def reference_profile(
    previous: tuple[float, ...] | None, measured: tuple[float, ...], tolerance: float
) -> tuple[tuple[float, ...], bool]:
    """The profile a run uses and whether it moved: the previous version's while ``measured`` is
    within ``tolerance`` of it on every twelfth, else ``measured``.  No previous version (None):
    ``measured``, not moved; a previous version that records none (``()``, made before profiles were
    recorded): ``measured``, moved."""
    if previous is None:
        return measured, False
    if len(previous) != len(measured):
        return measured, True
    # profiles are rounded to hundredths: 1.05 - 1.00 is 0.05 and a bit in binary
    if max(abs(a - b) for a, b in zip(previous, measured, strict=True)) <= tolerance + 1e-9:
        return previous, False
    return measured, True


def settle_profile(
    spark: SparkSession,
    scan: MasterScan,
    plan: BucketPlan,
    current: BatchManifest | None,
    tolerance: float,
) -> None:
    """Measure the fleet's seasonal profile for ``plan``; if it left the previous version's by more
    than ``tolerance``, make every bucket whole (:func:`reference_profile`).

    A carried bucket's share comes from the previous manifest (its files are
    the same); every other bucket's is measured (:func:`profile_pass`).
    """
    layout = current.layout if current is not None and plan.previous is not None else None
    stored: dict[str, list[float]] = layout.profile_sums if layout is not None else {}
    measure = {
        b: [str(f) for f in files]
        for b, files in scan.bucket_files.items()
        if b not in plan.carried or str(b) not in stored
    }
    if measure:
        spark.sparkContext.setJobDescription(f"pcc batch: fleet profile over {len(measure)} vehicle buckets")
    measured = profile_pass(spark, measure)
    plan.profile_sums = {
        b: [*measured[b][0], *measured[b][1]] if b in measured else list(stored[str(b)])
        for b in sorted(scan.bucket_files)
    }
    km, days = [0.0] * 12, [0.0] * 12
    for sums in plan.profile_sums.values():  # bucket order: the same additions as a full rebuild
        km = [a + b for a, b in zip(km, sums[:12], strict=True)]
        days = [a + b for a, b in zip(days, sums[12:], strict=True)]
    plan.measured_profile = profile_from_sums(km, days)
    previous = (current.fleet_profile or ()) if current is not None and plan.previous is not None else None
    plan.profile, plan.profile_moved = reference_profile(previous, plan.measured_profile, tolerance)
    if plan.profile_moved:
        plan.whole = sorted(scan.bucket_files)
        plan.partial, plan.carried = {}, []


def apply_set_aside(plan: BucketPlan, reused: ReusedIds) -> None:
    """Leave out the rows of ids another vehicle keeps: their vehicles are redone without them (a
    carried bucket holding one becomes partly redone), on every run while the rows are in the master."""
    by_bucket: dict[int, list[tuple[str, str]]] = {}
    for event_id, vehicle in reused.pairs():
        by_bucket.setdefault(bucket_of(vehicle, plan.buckets), []).append((event_id, vehicle))
    plan.set_aside = {b: tuple(pairs) for b, pairs in by_bucket.items()}
    for bucket, pairs in by_bucket.items():
        vehicles = {v for _, v in pairs}
        if bucket in plan.carried:
            plan.carried.remove(bucket)
            plan.partial[bucket] = sorted(vehicles)
        elif bucket in plan.partial:
            plan.partial[bucket] = sorted(set(plan.partial[bucket]) | vehicles)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system: a copy is the fallback
        shutil.copy2(src, dst)


def write_version(
    spark: SparkSession,
    scan: MasterScan,
    plan: BucketPlan,
    out: Path,
    timely_lag_s: int,
) -> dict[str, Any]:
    """Write the four views of a new version under ``out``; returns the manifest's ``layout`` section."""
    aside, checks, lag = plan.set_aside, file_checks(), timely_lag_s
    tasks = [
        BucketTask(
            b,
            [str(f) for f in scan.bucket_files[b]],
            str(out),
            set_aside=aside.get(b, ()),
            checks=checks,
            timely_lag_s=lag,
        )
        for b in plan.whole
    ]
    tasks += [
        BucketTask(
            b,
            [str(f) for f in scan.bucket_files[b]],
            str(out),
            str(plan.previous),
            vehicles,
            aside.get(b, ()),
            checks,
            lag,
        )
        for b, vehicles in sorted(plan.partial.items())
    ]
    for view in PER_VEHICLE_VIEWS:
        (out / view).mkdir(parents=True, exist_ok=True)
    summaries = []
    if tasks:
        spark.sparkContext.setJobDescription(f"pcc batch: rules pass over {len(tasks)} vehicle buckets")
        summaries = [r.asDict() for r in bucket_pass(spark, tasks, plan.profile).collect()]
    for s in summaries:
        for path, keys, rows, counts, moved in pickle.loads(s.pop("file_keys")):
            with contextlib.suppress(OSError):  # a digest file gone: the audit reads the view file
                plan.file_keys[path] = (keys, rows, with_digests(counts, moved))
    shutil.rmtree(out / DIGESTS_DIR, ignore_errors=True)
    previous = plan.previous
    assert previous is not None or not plan.carried
    for bucket in plan.carried:
        assert previous is not None
        name = bucket_file_name(bucket)
        linked = [(previous / v / name, out / v / name) for v in PER_VEHICLE_VIEWS]
        for src, dst in [*linked, (sums_path(previous, bucket), sums_path(out, bucket))]:
            if src.exists():
                _link(src, dst)
    sums = read_sums([sums_path(out, b) for b in sorted(scan.bucket_files)], timely_lag_s)
    if sums is not None:
        write_reputation(reputation_from_sums(sums), out / "source_reputation")
    else:  # a carried bucket from a version without sums, or made with another timely_lag_s
        history = spark.read.parquet(str(out / "vehicle_history")).select(
            "source_id", "verification", "batch_flags", "ingestion_time", "event_time", "quality"
        )
        spark.sparkContext.setJobDescription("pcc batch: source_reputation")
        build.write_view(build.source_reputation(history, timely_lag_s), out / "source_reputation")
    return {
        **plan.summary(),
        "files": {str(b): sorted(f.name for f in files) for b, files in sorted(scan.bucket_files.items())},
        "profile_sums": {str(b): sums for b, sums in plan.profile_sums.items()},
        "rows_read": sum(int(s["rows_in"]) for s in summaries),
    }
