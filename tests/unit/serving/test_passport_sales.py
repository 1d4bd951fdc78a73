"""The passport as a product, over HTTP in process: a paid report (one receipt at governance's price,
funds checked before any row is read, charged only once the report is rendered) or the owner's share
link (free); without either 402 with the price, never the history; the verify link stays free."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("eth_account")

import serving.passport.router
from serving.auth import Authenticator, RequestDomain, sign_request
from serving.client import PccClient
from serving.eip191 import Signer
from serving.errors import AuthenticationError, PaymentRequiredError
from serving.market.pricing import CONSORTIUM, PASSPORT_REPORT_CATEGORY, InMemoryBilling
from serving.market.receipts import ReceiptStore, verify_receipt
from serving.market.settlement import Settler
from serving.passport import InMemoryPassportSource, PassportSales, passport_router, report_quote
from serving.passport.assemble import build_passport
from serving.passport.errors import ServingViewMissingError
from serving.passport.sales import report_hash
from serving.passport.share import SHARE_PARAM, ShareLinks, ShareStore
from serving.passport.source import Row
from tests.fixtures.passport_history import OTHER, VEHICLE, History, build_history
from tests.fixtures.serving import CONSUMER_KEY, POOR_KEY, PRICES

with warnings.catch_warnings():  # Starlette asks for its httpx fork; the pinned httpx works as is
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi import FastAPI
    from starlette.testclient import TestClient

REPORT_CENTS = 40
ACCOUNT = Signer(CONSUMER_KEY).address
POOR = Signer(POOR_KEY).address
SERVICE_KEY = "0x" + "33" * 32


class CountingSource(InMemoryPassportSource):
    """The history, counting the reads (a refused request must read nothing)."""

    def __init__(self, history: History) -> None:
        super().__init__(history.rows, history.fraud)
        self.reads = 0
        self.fail: Exception | None = None

    def history(self, vehicle: str) -> list[Row]:
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        return super().history(vehicle)


@dataclass
class Shop:
    app: FastAPI
    http: TestClient
    source: CountingSource
    billing: InMemoryBilling
    receipts: ReceiptStore
    links: ShareLinks
    history: History

    def client(self, key: str = CONSUMER_KEY) -> PccClient:
        http = TestClient(self.app)  # closed with the client
        return PccClient("http://testserver", key, http=http, domain=RequestDomain.local())

    def signed(self, path: str, key: str = CONSUMER_KEY) -> Any:
        return self.http.get(path, headers=sign_request(key, "GET", path, b""))


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    history = build_history()
    receipts = ReceiptStore(tmp_path / "receipts.sqlite", SERVICE_KEY)
    billing = InMemoryBilling({**PRICES, PASSPORT_REPORT_CATEGORY: REPORT_CENTS}, fee_bps=1000)
    billing.fund(ACCOUNT, 1_000)
    billing.fund(POOR, REPORT_CENTS - 1)
    links = ShareLinks(bytes(range(32)), ShareStore(tmp_path / "shares.sqlite"))
    source = CountingSource(history)
    sales = PassportSales(billing, receipts, Authenticator(receipts, 300))
    app = FastAPI()
    app.include_router(passport_router(source, history.roots, sales=sales, shares=links))
    try:
        yield Shop(
            app, TestClient(app, raise_server_exceptions=False), source, billing, receipts, links, history
        )
    finally:
        receipts.close()


def _events_by_source(history: History) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in history.of_vehicle():
        counts[row["source_id"]] = counts.get(row["source_id"], 0) + 1
    return counts


def test_without_payment_or_link_the_answer_is_402_with_the_price_never_the_history(shop: Shop) -> None:
    for path in (f"/passport/{VEHICLE}", f"/passport/{VEHICLE}/data.json", f"/passport/v-{'0' * 32}"):
        response = shop.http.get(path)
        assert response.status_code == 402
        assert response.headers["X-PCC-Price-Cents"] == str(REPORT_CENTS)
        assert response.headers["Cache-Control"] == "private, no-store"
        for row in shop.history.of_vehicle():
            assert row["event_id"] not in response.text
    body = shop.http.get(f"/passport/{VEHICLE}/data.json").json()
    assert body["error"] == "PaymentRequiredError" and body["quote"]["amount_cents"] == REPORT_CENTS
    assert "share link" in body["message"] and "signed request" in body["message"]
    page = shop.http.get(f"/passport/{VEHICLE}")
    assert page.headers["content-type"].startswith("text/html") and f"{REPORT_CENTS} cents" in page.text
    assert shop.source.reads == 0 and shop.receipts.pending(10) == []


def test_an_unfunded_consumer_gets_402_and_pays_nothing(shop: Shop) -> None:
    with shop.client(POOR_KEY) as client, pytest.raises(PaymentRequiredError, match="can pay 39") as info:
        client.passport(VEHICLE)
    assert info.value.quote["amount_cents"] == REPORT_CENTS
    assert shop.source.reads == 0  # refused before any row was read
    assert shop.receipts.for_consumer(POOR) == [] and shop.receipts.pending_cents(POOR) == 0
    # the refused request's nonce is spent all the same: it cannot be replayed once funded
    path = f"/passport/{VEHICLE}/data.json"
    headers = sign_request(POOR_KEY, "GET", path, b"")
    assert shop.http.get(path, headers=headers).status_code == 402
    shop.billing.fund(POOR, 1)
    replay = shop.http.get(path, headers=headers)
    assert replay.status_code == 401 and "already used" in replay.json()["message"]
    assert shop.signed(path, POOR_KEY).status_code == 200


def test_a_funded_consumer_gets_the_report_and_one_receipt_at_the_report_price(shop: Shop) -> None:
    with shop.client() as client:
        report = client.passport(VEHICLE)
        page = client.passport(VEHICLE, "html")
    assert report.data == build_passport(
        InMemoryPassportSource(shop.history.rows, shop.history.fraud), VEHICLE
    )
    assert report.price_cents == page.price_cents == REPORT_CENTS
    assert page.media_type.startswith("text/html") and b"Passport report, paid in PCC_token" in page.content
    issued = sorted(shop.receipts.for_consumer(ACCOUNT), key=lambda r: r["receipt_no"])
    assert [r["receipt_no"] for r in issued] == [report.receipt_no, page.receipt_no]
    json_receipt = issued[0]
    assert json_receipt["amount_cents"] == REPORT_CENTS and json_receipt["fee_bps"] == 1000
    assert json_receipt["query_hash"] == report_hash(VEHICLE, "json")
    assert issued[1]["query_hash"] == report_hash(VEHICLE, "html")
    assert verify_receipt(json_receipt) == shop.receipts.signer
    # the price is shared by the producers whose events the report shows, in proportion to their events
    shares = json_receipt["by_producer"]
    assert {s: p["rows"] for s, p in shares.items()} == _events_by_source(shop.history)
    assert sum(p["cents"] for p in shares.values()) == REPORT_CENTS

    # settled like queries: the consumer pays both reports, the producers and the treasury are paid
    before = dict(shop.billing.balances)
    Settler(shop.receipts, shop.billing).settle_pending()
    assert shop.billing.balances[ACCOUNT.lower()] == before[ACCOUNT.lower()] - 2 * REPORT_CENTS
    paid = {s: shop.billing.balances.get(s, 0) for s in shares}
    assert all(cents > 0 for cents in paid.values())
    assert sum(paid.values()) + shop.billing.balances["treasury"] == 2 * REPORT_CENTS
    assert shop.receipts.pending(10) == []


@pytest.mark.parametrize(
    "failure, status",
    [
        ("render", 500),
        ("view", 503),
        ("unknown", 404),
    ],
)
def test_a_report_that_fails_before_delivery_is_free(
    shop: Shop, monkeypatch: pytest.MonkeyPatch, failure: str, status: int
) -> None:
    vehicle = VEHICLE
    if failure == "render":

        def broken(*_: object, **__: object) -> str:
            raise RuntimeError("the template engine broke")

        monkeypatch.setattr(serving.passport.router, "render_passport", broken)
    elif failure == "view":
        shop.source.fail = ServingViewMissingError("the serving view vehicle_history is not available")
    else:
        vehicle = f"v-{'0' * 32}"
    response = shop.signed(f"/passport/{vehicle}")
    assert response.status_code == status
    assert shop.source.reads == 1  # paid for, read, failed: and so not charged
    assert shop.receipts.for_consumer(ACCOUNT) == [] and shop.receipts.pending_cents(ACCOUNT) == 0


def test_no_report_is_sold_before_governance_sets_its_price(shop: Shop) -> None:
    shop.billing._prices.pop(PASSPORT_REPORT_CATEGORY)
    for response in (
        shop.http.get(f"/passport/{VEHICLE}/data.json"),
        shop.signed(f"/passport/{VEHICLE}/data.json"),
    ):
        assert response.status_code == 503 and PASSPORT_REPORT_CATEGORY in response.json()["message"]
    assert shop.source.reads == 0 and shop.receipts.for_consumer(ACCOUNT) == []


def test_a_badly_signed_request_is_401(shop: Shop) -> None:
    path = f"/passport/{VEHICLE}/data.json"
    elsewhere = sign_request(CONSUMER_KEY, "GET", f"/passport/{OTHER}/data.json", b"")
    assert shop.http.get(path, headers=elsewhere).status_code == 401
    partial = {k: v for k, v in sign_request(CONSUMER_KEY, "GET", path, b"").items() if k != "X-PCC-Nonce"}
    response = shop.http.get(path, headers=partial)
    assert response.status_code == 401 and "X-PCC-Nonce" in response.json()["message"]
    other_chain = RequestDomain.local(chain_id=1)  # signed for another deployment
    with (
        PccClient("http://testserver", CONSUMER_KEY, http=TestClient(shop.app), domain=other_chain) as client,
        pytest.raises(AuthenticationError, match="another deployment"),
    ):
        client.passport(VEHICLE)
    assert shop.source.reads == 0 and shop.receipts.for_consumer(ACCOUNT) == []


def test_reports_bought_at_once_never_spend_more_than_the_account_holds(shop: Shop) -> None:
    shop.billing.balances[ACCOUNT.lower()] = 2 * REPORT_CENTS
    statuses: list[int] = []

    def buy() -> None:
        statuses.append(shop.signed(f"/passport/{VEHICLE}/data.json").status_code)

    threads = [threading.Thread(target=buy) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 200, 402, 402, 402]
    assert shop.receipts.pending_cents(ACCOUNT) == 2 * REPORT_CENTS


def test_the_owners_share_link_opens_the_page_and_its_data_free(shop: Shop) -> None:
    link = shop.links.create(VEHICLE, 3600)
    page = shop.http.get(link.url(""))
    assert page.status_code == 200 and "Shared by the owner" in page.text
    assert page.headers["Referrer-Policy"] == "no-referrer" and "X-PCC-Receipt" not in page.headers
    # the page's data link carries the token; its verify links do not need it
    assert f'href="/passport/{VEHICLE}/data.json?{SHARE_PARAM}={link.token}"' in page.text
    data = shop.http.get(f"/passport/{VEHICLE}/data.json", params={SHARE_PARAM: link.token})
    assert data.status_code == 200 and data.json()["vehicle"] == VEHICLE
    # a link opens its own car only, and ends when revoked
    other = shop.http.get(f"/passport/{OTHER}", params={SHARE_PARAM: link.token})
    assert other.status_code == 403 and "not made for this vehicle" in other.text
    shop.links.store.revoke(VEHICLE, link.link_id)
    revoked = shop.http.get(f"/passport/{VEHICLE}/data.json", params={SHARE_PARAM: link.token})
    assert revoked.status_code == 403 and "revoked" in revoked.json()["message"]
    assert shop.http.get(f"/passport/{VEHICLE}", params={SHARE_PARAM: "forged"}).status_code == 403
    assert shop.receipts.pending(10) == []


def test_the_verify_link_stays_free(shop: Shop) -> None:
    service = shop.history.row("maintenance")
    response = shop.http.get(f"/passport/{VEHICLE}/verify/{service['event_id']}")
    assert response.status_code == 200 and response.json()["event_id"] == service["event_id"]
    assert shop.receipts.pending(10) == []


def test_a_service_that_sells_no_reports_opens_only_share_links(tmp_path: Path) -> None:
    history = build_history()
    app = FastAPI()
    app.include_router(passport_router(InMemoryPassportSource(history.rows), history.roots))
    http = TestClient(app)
    for response in (http.get(f"/passport/{VEHICLE}"), http.get(f"/passport/{VEHICLE}/data.json")):
        assert response.status_code == 401 and "share link" in response.text
    signed = http.get(
        f"/passport/{VEHICLE}", headers=sign_request(CONSUMER_KEY, "GET", f"/passport/{VEHICLE}", b"")
    )
    assert signed.status_code == 401 and "sells no passport reports" in signed.text


def test_the_price_is_shared_by_the_producers_to_the_cent() -> None:
    quote = report_quote(10, 500, {"a": 1, "b": 1, "c": 1})
    assert quote.amount_cents == 10 and quote.kind == "passport_report"
    assert {s: p["cents"] for s, p in quote.by_producer.items()} == {"a": 4, "b": 3, "c": 3}
    quote = report_quote(100, 0, {"a": 7, None: 2, "z": 0})
    assert quote.by_producer == {"a": {"rows": 7, "cents": 78}, CONSORTIUM: {"rows": 2, "cents": 22}}
    assert report_quote(25, 0, {}).by_producer == {}
