"""Prices, signed requests and receipts without a server."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("eth_account")

from serving.auth import Authenticator, sign_request
from serving.errors import AuthenticationError, PriceUnavailableError
from serving.market.pricing import Quote, Usage, price_usage
from serving.market.receipts import ReceiptStore, verify_receipt

KEY = "0x" + "33" * 32
SERVICE = "0x" + "44" * 32


def test_price_is_rows_times_category_price_per_producer() -> None:
    usage = [Usage("a", "mileage", 10, 100_000), Usage("b", "accident+precise_location", 3, 30_000)]
    quote = price_usage(usage, {"mileage": 2, "accident": 5, "precise_location": 1}, fee_bps=1000)
    assert quote.by_producer == {"a": {"rows": 10, "cents": 20}, "b": {"rows": 3, "cents": 18}}
    assert quote.amount_cents == 38 and quote.fee_cents == 3


def test_quality_weight_scales_the_price() -> None:
    half = [Usage("a", "mileage", 10, 10 * 5_000)]  # quality 0.5
    assert price_usage(half, {"mileage": 10}, 0, quality_weight_bps=10_000).amount_cents == 50
    assert price_usage(half, {"mileage": 10}, 0, quality_weight_bps=5_000).amount_cents == 75
    assert price_usage(half, {"mileage": 10}, 0, quality_weight_bps=0).amount_cents == 100


def test_missing_category_price_is_refused() -> None:
    with pytest.raises(PriceUnavailableError, match="owner_identity"):
        price_usage([Usage("a", "owner_identity", 1, 10_000)], {"mileage": 1}, 0)


@pytest.fixture
def store(tmp_path: Path) -> ReceiptStore:
    return ReceiptStore(tmp_path / "receipts.sqlite", SERVICE)


def test_signed_request_verifies_once(store: ReceiptStore) -> None:
    auth = Authenticator(store)
    headers = sign_request(KEY, "POST", "/v1/query", b"{}")
    consumer = auth.verify("POST", "/v1/query", b"{}", headers)
    assert consumer.account == headers["X-PCC-Account"]
    with pytest.raises(AuthenticationError, match="replayed"):
        auth.verify("POST", "/v1/query", b"{}", headers)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/v1/query", b"{}"), ("POST", "/v1/quote", b"{}"), ("POST", "/v1/query", b"[]")],
)
def test_signature_binds_method_path_and_body(
    store: ReceiptStore, method: str, path: str, body: bytes
) -> None:
    headers = sign_request(KEY, "POST", "/v1/query", b"{}")
    with pytest.raises(AuthenticationError, match="does not match"):
        Authenticator(store).verify(method, path, body, headers)


def test_expired_and_far_future_requests_are_refused(store: ReceiptStore) -> None:
    auth = Authenticator(store, max_age_s=300)
    with pytest.raises(AuthenticationError, match="expired"):
        auth.verify("POST", "/p", b"", sign_request(KEY, "POST", "/p", b"", ttl_s=-1))
    with pytest.raises(AuthenticationError, match="ahead"):
        auth.verify("POST", "/p", b"", sign_request(KEY, "POST", "/p", b"", ttl_s=3600))
    assert int(time.time()) > 0


def test_receipt_is_signed_unique_per_request_and_settles_once(store: ReceiptStore) -> None:
    quote = Quote(38, 1000, {"a": {"rows": 10, "cents": 20}, "b": {"rows": 3, "cents": 18}}, "rows", "v1")
    receipt = store.issue("0xabc", "nonce-0001", "ab" * 32, quote)
    assert verify_receipt(receipt) == store.signer
    assert verify_receipt({**receipt, "amount_cents": 1}) != store.signer
    import sqlite3

    with pytest.raises(sqlite3.IntegrityError):
        store.issue("0xabc", "nonce-0001", "ab" * 32, quote)
    assert store.pending_cents("0xabc") == 38
    store.mark_settled([receipt["receipt_no"]], "0xtx1")
    store.mark_settled([receipt["receipt_no"]], "0xtx2")
    assert store.pending_cents("0xabc") == 0
    assert store.for_consumer("0xabc")[0]["settled_tx"] == "0xtx1"


def test_what_a_consumer_owes_follows_every_receipt_and_settlement(tmp_path: Path) -> None:
    path = tmp_path / "receipts.sqlite"
    store = ReceiptStore(path, SERVICE)
    quote = Quote(25, 1000, {"a": {"rows": 5, "cents": 25}}, "rows", "v1")
    free = Quote(0, 1000, {}, "rows", "v1")
    assert store.pending_cents("0xabc") == 0
    first = store.issue("0xabc", "nonce-0001", "ab" * 32, quote)
    store.issue("0xabc", "nonce-0002", "ab" * 32, quote)
    store.issue("0xabc", "nonce-0003", "ab" * 32, free)
    store.issue("0xdef", "nonce-0001", "ab" * 32, quote)
    assert (store.pending_cents("0xabc"), store.pending_cents("0xdef")) == (50, 25)
    with sqlite3.connect(path) as db:  # what the file says
        owed = "SELECT sum(amount_cents) FROM receipts WHERE consumer = ? AND settled_tx IS NULL"
        assert db.execute(owed, ("0xabc",)).fetchone() == (50,)
    assert [r["signature"] == first["signature"] for r in store.for_consumer("0xabc")] == [False, False, True]
    store.mark_settled([first["receipt_no"]], "0xtx1")
    assert (store.pending_cents("0xabc"), store.pending_cents("0xdef")) == (25, 25)


def _web_request(method: str, target: str, body: bytes, headers: dict[str, str]) -> Any:
    from starlette.requests import Request

    path, _, query = target.partition("?")
    scope = {
        "type": "http", "method": method, "path": path, "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


@pytest.mark.parametrize(
    "sent",
    [
        "/v1/subscriptions?kinds=fraud.clone&after=2",  # a query value changed after signing
        "/v1/subscriptions?kinds=fraud.clone&after=1&extra=1",  # a parameter added
        "/v1/subscriptions",  # the query dropped
        "/v1/subscriptions/?kinds=fraud.clone&after=1",  # another path
    ],
)
def test_a_web_request_is_refused_when_its_url_is_not_the_one_signed(store: ReceiptStore, sent: str) -> None:
    """As an attacker holding one signed request: any change to its path or query is refused
    (``verify_request`` checks the signature over the path and the query as sent)."""
    import asyncio

    signed = "/v1/subscriptions?kinds=fraud.clone&after=1"
    headers = sign_request(KEY, "GET", signed, b"")
    auth = Authenticator(store)
    with pytest.raises(AuthenticationError, match="does not match"):
        asyncio.run(auth.verify_request(_web_request("GET", sent, b"", headers)))
    body, consumer = asyncio.run(auth.verify_request(_web_request("GET", signed, b"", headers)))
    assert consumer.account == headers["X-PCC-Account"] and body == b""
