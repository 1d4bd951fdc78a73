"""The passport over the serving layer's own merged views (batch version + real-time tail), mounted
on the serving app: unpaid 402, shared free, sold with a receipt."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import httpx
import pyarrow as pa
from fastapi import FastAPI

from pipelines.dataset import MASTER_SCHEMA
from serving.api import create_app
from serving.auth import sign_request
from serving.client import PccClient
from serving.config import ServingConfig
from serving.eip191 import Signer
from serving.engine.views import ServingStore
from serving.market.pricing import PASSPORT_REPORT_CATEGORY, InMemoryBilling
from serving.market.receipts import ReceiptStore
from serving.passport import (
    DuckDBPassportSource,
    InMemoryPassportSource,
    LeafFilePaths,
    ShareLinks,
    build_passport,
    mount_passport,
    verify_event,
)
from tests.fixtures.passport_history import VEHICLE, build_history
from tests.fixtures.serving import CONSUMER_KEY, PRICES, publish_batch, write_segment

with warnings.catch_warnings():  # Starlette asks for its httpx fork; the pinned httpx works as is
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient


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


def test_mounted_on_the_serving_app_reports_are_sold_or_shared(tmp_path: Path) -> None:
    history = build_history()
    write_segment(tmp_path, pa.Table.from_pylist(history.rows, schema=MASTER_SCHEMA))
    config = ServingConfig(data_dir=tmp_path)
    store = ServingStore(config)
    receipts = ReceiptStore(config.state_dir / "receipts.sqlite", "0x" + "33" * 32)
    billing = InMemoryBilling({PASSPORT_REPORT_CATEGORY: 25})
    billing.fund(Signer(CONSUMER_KEY).address, 100)
    app = FastAPI()  # what mount_passport reads of create_app's: the store and the receipts
    app.state.store, app.state.receipts = store, receipts
    paths = LeafFilePaths(history.write_leaf_files(tmp_path / "logs"))
    mount_passport(app, history.roots, paths, billing=billing)
    link = ShareLinks.open(config.state_dir).create(VEHICLE, 3600)  # as `pcc passport share` makes it
    service = history.row("maintenance")
    data = f"/passport/{VEHICLE}/data.json"

    async def fetch() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://serve.test"
        ) as c:
            return [
                await c.get(f"/passport/{VEHICLE}"),
                await c.get(link.url("")),
                await c.get(data, headers=sign_request(CONSUMER_KEY, "GET", data, b"")),
                await c.get(f"/passport/{VEHICLE}/verify/{service['event_id']}"),
            ]

    try:
        store.refresh()
        unpaid, shared, paid, verified = asyncio.run(fetch())
        assert unpaid.status_code == 402 and unpaid.headers["X-PCC-Price-Cents"] == "25"
        assert shared.status_code == 200
        assert shared.text.count('<circle class="pt ') == len(history.readings())
        assert "Not scored yet" in shared.text  # no batch version published: no fraud score
        assert paid.status_code == 200 and len(paid.json()["readings"]) == len(history.readings())
        assert [r["receipt_no"] for r in receipts.pending(10)] == [int(paid.headers["X-PCC-Receipt"])]
        assert verified.json()["status"] == "verified"
    finally:
        receipts.close()
        store.close()


def test_on_the_serving_apps_own_app_reports_are_sold_like_queries(tmp_path: Path) -> None:
    history = build_history()
    write_segment(tmp_path, pa.Table.from_pylist(history.rows, schema=MASTER_SCHEMA))
    account = Signer(CONSUMER_KEY).address
    billing = InMemoryBilling({**PRICES, PASSPORT_REPORT_CATEGORY: 25})
    billing.fund(account, 10_000)
    app = create_app(ServingConfig(data_dir=tmp_path), billing, background=False)
    mount_passport(app, history.roots)
    try:
        with PccClient("http://testserver", CONSUMER_KEY, http=TestClient(app)) as client:
            query = client.query(f"SELECT event_id FROM vehicle_history WHERE vehicle = '{VEHICLE}'", "json")
            report = client.passport(VEHICLE)
            receipts = {r["receipt_no"]: r for r in client.receipts()}
        assert report.price_cents == 25 and len(report.data["timeline"]) == len(history.of_vehicle())
        assert receipts[report.receipt_no]["amount_cents"] == 25
        assert set(receipts) == {query.receipt["receipt_no"], report.receipt_no}
        assert app.state.paid.reservations.held(account) == 0  # the report's hold became its receipt
        assert app.state.receipts.pending_cents(account) == 25 + query.receipt["amount_cents"]
    finally:
        app.state.receipts.close()
        app.state.store.close()
