"""The query endpoint's billing order, in process (Starlette's test client, no server or chain):
everything that can fail runs before the receipt is written, so a failed answer costs nothing."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("eth_account")

import serving.paid
from pipelines.access import AccessDenied, ConsumerKeyPair
from serving.api import create_app
from serving.auth import sign_request
from serving.client import PccClient
from serving.config import ServingConfig
from serving.eip191 import Signer
from serving.market.pricing import InMemoryBilling
from tests.fixtures.serving import CONSUMER_KEY, PRICES, make_events, publish_batch, vehicle_id

with warnings.catch_warnings():  # Starlette asks for its httpx fork; the pinned httpx works as is
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

ONE = f"SELECT * FROM vehicle_history WHERE vehicle = '{vehicle_id(1)}' ORDER BY event_time"
ACCOUNT = Signer(CONSUMER_KEY).address


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Any]:
    publish_batch(tmp_path, "v1", make_events(60, vehicles=3))
    billing = InMemoryBilling(PRICES)
    billing.fund(ACCOUNT, 1_000_000)
    # any object stands for the access service: the failing step is faked at its boundary
    app = create_app(ServingConfig(data_dir=tmp_path), billing, background=False, access=object())  # type: ignore[arg-type]
    app.state.billing = billing
    yield app
    app.state.receipts.close()
    app.state.store.close()


def _client(app: Any, grant: bool) -> PccClient:
    keys = ConsumerKeyPair.generate() if grant else None
    return PccClient("http://testserver", CONSUMER_KEY, grant_keys=keys, http=TestClient(app))


def test_a_failing_wrapped_key_step_charges_nothing(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> dict[str, Any]:
        raise AccessDenied("the grant store is unreachable")

    monkeypatch.setattr(serving.paid, "wrapped_keys_for", refuse)
    with _client(app, grant=True) as client, pytest.raises(AccessDenied, match="unreachable"):
        client.query(ONE)
    assert app.state.receipts.for_consumer(ACCOUNT) == []
    assert app.state.receipts.pending_cents(ACCOUNT) == 0
    # the same query without a grant key is charged: the failure above is what made it free
    with _client(app, grant=False) as client:
        paid = client.query(ONE)
    assert paid.price_cents > 0
    assert [r["receipt_no"] for r in app.state.receipts.for_consumer(ACCOUNT)] == [paid.receipt["receipt_no"]]
    assert app.state.receipts.pending_cents(ACCOUNT) == paid.price_cents


def test_a_failed_grantee_query_still_spends_its_nonce(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> dict[str, Any]:
        raise AccessDenied("no grant")

    monkeypatch.setattr(serving.paid, "wrapped_keys_for", refuse)
    body = b'{"sql": "%s", "grant_key": "%s"}' % (
        ONE.encode(),
        ConsumerKeyPair.generate().public_key.hex().encode(),
    )
    headers = sign_request(CONSUMER_KEY, "POST", "/v1/query", body)
    http = TestClient(app)
    first = http.post("/v1/query", content=body, headers=headers)
    replay = http.post("/v1/query", content=body, headers=headers)
    assert first.status_code == 403
    assert replay.status_code == 401 and "replayed" in replay.json()["message"]
    assert app.state.receipts.for_consumer(ACCOUNT) == []


class _SuspendingBilling(InMemoryBilling):
    """In-memory billing whose registry suspends one producer (as ChainBilling.producer_problems says)."""

    def producer_problems(self, source_ids: Any) -> dict[str, str]:
        return {s: "suspended" for s in source_ids if s == "garage-net-03"}


def test_a_suspended_producers_rows_are_paid_to_the_consortium_not_refused(tmp_path: Path) -> None:
    publish_batch(tmp_path, "v1", make_events(60, vehicles=3))
    billing = _SuspendingBilling(PRICES)
    billing.fund(ACCOUNT, 1_000_000)
    app = create_app(ServingConfig(data_dir=tmp_path), billing, background=False)
    try:
        with _client(app, grant=False) as client:
            fleet = client.query("SELECT source_id, count(*) AS n FROM vehicle_history GROUP BY 1")
            quote = client.quote("SELECT source_id, count(*) AS n FROM vehicle_history GROUP BY 1")
        assert {r["source_id"] for r in fleet.rows} == {"cc-aurora", "garage-net-03", "ins-mutua"}
        receipt = app.state.receipts.for_consumer(ACCOUNT)[0]
        assert "garage-net-03" not in receipt["by_producer"]
        assert receipt["by_producer"]["pcc-consortium"]["cents"] == quote["by_producer"]["garage-net-03"]["cents"]
        assert receipt["amount_cents"] == quote["amount_cents"]  # the consumer pays the same
    finally:
        app.state.receipts.close()
        app.state.store.close()
