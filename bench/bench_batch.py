"""Batch rebuild time against a DuckDB reference, and fraud quality on a held-out simulator seed.

    .venv/bin/python bench/bench_batch.py --vehicles 2000 --days 365 --seed 7 [--master local[2]]

Simulates a fleet, writes it as a master dataset (batch.testing stands in for
the speed layer), rebuilds all four views with ``run_batch`` (JVM start timed
separately), then times DuckDB computing the same rollback flags (a reading more
than the rules' tolerance below the vehicle's highest earlier reading) from the
same Parquet, in the same run.  Prints the figures and the ratio, evaluates
``fraud_scores`` against the seed's labels, samples the driver JVM's peak RSS,
and writes everything to ``bench/results/batch-<events>.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import psutil

from batch.config import BatchConfig
from batch.evaluate import evaluate_published
from batch.session import get_spark
from batch.testing import master_from_simulation
from pipelines.rules.fraud import DEFAULT_PARAMS
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.fleet import write_fleet

ROLLBACK_SQL = """
WITH r AS (
  SELECT vehicle, event_id, odometer_km,
         max(odometer_km) OVER (PARTITION BY vehicle ORDER BY event_time, source_id, log_index, event_id
                                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_max
  FROM read_parquet('{root}/*/*.parquet', hive_partitioning = true)
  WHERE odometer_km IS NOT NULL AND verification = 'verified'
)
SELECT count(*) FILTER (WHERE prev_max - odometer_km > {tol}) AS flagged,
       count(DISTINCT vehicle) FILTER (WHERE prev_max - odometer_km > {tol}) AS vehicles
FROM r
"""


def peak_rss(stop: threading.Event, out: list[int]) -> None:
    me = psutil.Process()
    while not stop.is_set():
        try:
            jvms = [c for c in me.children(recursive=True) if "java" in c.name()]
            out.append(max((c.memory_info().rss for c in jvms), default=0))
        except psutil.Error:
            pass
        stop.wait(0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vehicles", type=int, default=2000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--seed", type=int, default=7, help="held out: the rules were not tuned on it")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pcc-bench-batch-"))
    sim = work / "sim"
    t = time.perf_counter()
    write_fleet(SimulationConfig(vehicles=args.vehicles, days=args.days, seed=args.seed), sim)
    counts = master_from_simulation(sim, work / "master")
    prep_s = time.perf_counter() - t
    events = counts["events"]
    print(f"fleet: {args.vehicles} vehicles, {events} events ({prep_s:.1f}s to simulate and write)")

    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=peak_rss, args=(stop, samples), daemon=True)
    sampler.start()
    t = time.perf_counter()
    spark = get_spark(args.master, args.driver_memory, shuffle_partitions=8)
    jvm_s = time.perf_counter() - t
    from batch.jobs import run_batch

    config = BatchConfig(master_dataset=work / "master", batch_dir=work / "batch", spark_master=args.master)
    t = time.perf_counter()
    record = run_batch(config, spark=spark, full=True)
    batch_s = time.perf_counter() - t
    stop.set()
    sampler.join()

    import duckdb

    t = time.perf_counter()
    con = duckdb.connect()
    flagged, flagged_vehicles = con.execute(
        ROLLBACK_SQL.format(root=work / "master", tol=DEFAULT_PARAMS.rollback_tolerance_km)
    ).fetchone()
    duck_s = time.perf_counter() - t
    quality = evaluate_published(config, sim)
    result = {
        "events": events,
        "vehicles": args.vehicles,
        "spark_master": args.master,
        "jvm_start_s": round(jvm_s, 2),
        "batch_rebuild_s": round(batch_s, 2),
        "batch_stages_s": record.timings_s,
        "duckdb_rollback_reference_s": round(duck_s, 3),
        "ratio_batch_over_duckdb": round(batch_s / duck_s, 1),
        "duckdb_rollback_rows": flagged,
        "duckdb_rollback_vehicles": flagged_vehicles,
        "driver_jvm_peak_rss_mb": round(max(samples, default=0) / 2**20),
        "fraud_quality": quality.as_dict(),
    }
    print(f"batch rebuild (4 views, audit, publish): {batch_s:.1f}s (+{jvm_s:.1f}s JVM start)")
    print(
        f"DuckDB rollback flags, same Parquet:     {duck_s:.2f}s  -> ratio {batch_s / duck_s:.1f}x (target <= 4x)"
    )
    print(f"driver JVM peak RSS: {result['driver_jvm_peak_rss_mb']} MB (target <= 4096)")
    for k in quality.kinds:
        print(f"  {k.kind:22s} support {k.support:5d}  P {k.precision:.3f}  R {k.recall:.3f}  F1 {k.f1:.3f}")
    print(f"  clean cars labelled not clean: {quality.false_positive_rate:.2%} of {quality.clean_vehicles}")
    out = Path(__file__).parent / "results" / f"batch-{events}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written {out}")
    spark.stop()


if __name__ == "__main__":
    main()
