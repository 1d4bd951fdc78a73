"""The passport over the serving layer's own merged views: batch version + real-time tail."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipelines.dataset import MASTER_SCHEMA
from serving.config import ServingConfig
from serving.passport import (
    DuckDBPassportSource,
    InMemoryPassportSource,
    LeafFilePaths,
    build_passport,
    verify_event,
)
from serving.views import ServingStore
from tests.fixtures.passport_history import VEHICLE, build_history
from tests.fixtures.serving import publish_batch, write_segment


def test_passport_reads_the_merged_views_across_the_batch_boundary(tmp_path: Path) -> None:
    history = build_history()
    rows = sorted(history.rows, key=lambda r: r["processed_time"])
    cut = len(rows) * 2 // 3
    fraud = pa.Table.from_pylist(history.fraud)
    publish_batch(
        tmp_path,
        "20260101T000000Z-pass",
        pa.Table.from_pylist(rows[:cut], schema=MASTER_SCHEMA),
        {"fraud_scores": fraud},
    )
    write_segment(tmp_path, pa.Table.from_pylist(rows[cut:], schema=MASTER_SCHEMA))
    store = ServingStore(ServingConfig(data_dir=tmp_path))
    try:
        store.refresh()
        source = DuckDBPassportSource.from_store(store)
        passport = build_passport(source, VEHICLE)
        assert passport == build_passport(InMemoryPassportSource(history.rows, history.fraud), VEHICLE)
        paths = LeafFilePaths(history.write_leaf_files(tmp_path / "logs"))
        first, last = passport["readings"][0], passport["readings"][-1]
        for event_id, layer in ((first["event_id"], "batch"), (last["event_id"], "realtime")):
            proof = source.proof(event_id)
            assert proof is not None and proof["layer"] == layer
            assert verify_event(proof, history.roots, paths).status == "verified"
    finally:
        store.close()
