"""Ids carried by more than one vehicle, found bucket by bucket: what the Spark aggregate finds (real Spark)."""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch.filekeys import digests
from batch.master import read_master, scan_master
from batch.reused import (
    REUSED_COLUMNS,
    bucket_ids,
    decide_candidates,
    find_reused_ids,
    find_reused_ids_in_buckets,
)
from pipelines.dataset import MASTER_SCHEMA, write_layout
from speed.master import write_master_files
from tests.fixtures import batch_fleet as fleet

pytestmark = pytest.mark.integration

ROWS = fleet.fleet_rows()

copies = st.lists(
    st.tuples(
        st.integers(0, len(ROWS) - 1),  # the row whose id is sent again
        st.sampled_from(fleet.VEHICLES),  # for this car (its own: a replay, not a reuse)
        st.integers(-2, 40),  # days after the original was processed (0: a tie, settled by offset)
        st.integers(-3, 3),  # offset step
    ),
    max_size=8,
)


def _master(root: Path, buckets: int, extra: list[tuple[int, str, int, int]]) -> Path:
    rows = list(ROWS)
    for i, vehicle, days, step in extra:
        original = ROWS[i]
        rows.append(
            {
                **original,
                "vehicle": vehicle,
                "processed_time": original["processed_time"] + timedelta(days=days),
                "offset": original["offset"] + step,
            }
        )
    write_layout(root, buckets)
    for tmp, final in write_master_files(
        pa.Table.from_pylist(rows, schema=MASTER_SCHEMA), root, "flush-1", {}
    ):
        os.replace(tmp, final)
    return root


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=copies, buckets=st.sampled_from([1, 2, 64]))
def test_the_bucket_search_finds_what_the_spark_aggregate_finds(spark: Any, extra, buckets: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scan = scan_master(_master(Path(tmp) / "master", buckets, extra))
        assert scan.buckets == buckets
        exact = find_reused_ids(read_master(spark, scan).select(*REUSED_COLUMNS))
        by_bucket = find_reused_ids_in_buckets(spark, scan.bucket_files)
    assert by_bucket.kept == exact.kept and by_bucket.rows == exact.rows
    moved = {(ROWS[i]["event_id"], v) for i, v, _, _ in extra if v != ROWS[i]["vehicle"]}
    assert {e for e, _ in moved} == set(exact.kept)  # every id sent for another car is found


def test_ids_that_share_a_digest_are_told_apart(tmp_path: Path) -> None:
    """With every id given the same digest, every id is a candidate; only the one really carried by
    two cars is found."""
    i = next(k for k, r in enumerate(ROWS) if r["vehicle"] == fleet.CLEAN)
    scan = scan_master(_master(tmp_path / "master", 64, [(i, fleet.WRECK, 30, 0)]))

    def colliding(values: Any) -> np.ndarray:  # vehicles keep their digests, every event id gets 0
        cars = len(values) and str(values[0].as_py()).startswith("v-")
        return digests(values) if cars else np.zeros(len(values), np.uint64)

    facts = {b: bucket_ids([str(f) for f in files], colliding) for b, files in scan.bucket_files.items()}
    assert all(list(ids) == [0] for ids, _ in facts.values())
    found = decide_candidates(
        scan.bucket_files,
        {b: ids for b, (ids, _) in facts.items()},
        [s for _, s in facts.values()],
        colliding,
    )
    assert found.kept == {ROWS[i]["event_id"]: fleet.CLEAN}
    assert found.rows == {(ROWS[i]["event_id"], fleet.WRECK): 1}
