"""The passport over the serving layer's own merged views: batch version + real-time tail."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pyarrow as pa
from fastapi import FastAPI

from pipelines.dataset import MASTER_SCHEMA
from serving.config import ServingConfig
from serving.engine.views import ServingStore
from serving.passport import (
    DuckDBPassportSource,
    InMemoryPassportSource,
    LeafFilePaths,
    build_passport,
    mount_passport,
    verify_event,
)
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


def test_mounted_on_the_serving_app_the_page_and_verify_link_answer(tmp_path: Path) -> None:
    history = build_history()
    write_segment(tmp_path, pa.Table.from_pylist(history.rows, schema=MASTER_SCHEMA))
    store = ServingStore(ServingConfig(data_dir=tmp_path))
    app = FastAPI()
    app.state.store = store
    mount_passport(app, history.roots, LeafFilePaths(history.write_leaf_files(tmp_path / "logs")))
    service = history.row("maintenance")

    async def fetch() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://serve.test"
        ) as c:
            return [
                await c.get(f"/passport/{VEHICLE}"),
                await c.get(f"/passport/{VEHICLE}/verify/{service['event_id']}"),
            ]

    try:
        store.refresh()
        page, verified = asyncio.run(fetch())
        assert page.status_code == 200 and page.text.count('<circle class="pt ') == len(history.readings())
        assert "Not scored yet" in page.text  # no batch version published: no fraud score
        assert verified.json()["status"] == "verified"
    finally:
        store.close()
