"""The distributed path: the batch job against a Spark standalone cluster gives the views of local[*]."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from batch.config import BatchConfig
from batch.jobs import run_batch
from batch.publish import read_current
from tests.fixtures import batch_fleet as fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEYS = {
    "vehicle_history": ["event_id"],
    "mileage_timeline": ["event_id"],
    "fraud_scores": ["vehicle"],
    "source_reputation": ["source_id"],
}


def _views(config: BatchConfig) -> dict[str, pd.DataFrame]:
    current = read_current(config)
    assert current is not None
    return {
        name: pd.read_parquet(config.batch_dir / current.views[name])
        .sort_values(KEYS[name])
        .reset_index(drop=True)
        for name in KEYS
    }


def test_standalone_cluster_run_matches_local(spark: Any, spark_cluster: Any, tmp_path: Path) -> None:
    fleet.write_fleet(tmp_path / "master")
    local = BatchConfig(master_dataset=tmp_path / "master", batch_dir=tmp_path / "local")
    run_batch(local, spark=spark)
    # Spark allows one session per process: the cluster run is its own `pcc` process
    env = {
        **os.environ,
        "PCC__DATA_DIR": str(tmp_path / "cluster-data"),
        "PCC__BATCH__MASTER_DATASET": str(tmp_path / "master"),
        "PCC__BATCH__DRIVER_MEMORY": "1g",
        "PCC__BATCH__SHUFFLE_PARTITIONS": "4",
    }
    env.pop("PCC_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "batch", "run", "--master", spark_cluster.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "published version" in done.stdout
    cluster = BatchConfig(master_dataset=tmp_path / "master", batch_dir=tmp_path / "cluster-data" / "batch")
    runs = (cluster.batch_dir / "runs.jsonl").read_text()
    assert f'"spark_master": "{spark_cluster.url}"' in runs
    master_log = (spark_cluster.work_dir / "master.log").read_text(errors="replace")
    assert master_log.count("Registering worker") == 2  # the rebuild ran on two workers
    a, b = _views(local), _views(cluster)
    for name in KEYS:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=False, obj=name)
