"""Alerts billed like query rows, seen by the subscriber and the producer: one receipt per delivery at the
kind's governance price, paid to the producer of the alert's evidence event, settled with the queries'; a
subscriber that cannot pay gets nothing sent; and fleet-wide subscriptions for public kinds only."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

pytest.importorskip("eth_account")

from pipelines.access import Grant, InMemoryGrantStore
from pipelines.access.wrap import ConsumerKeyPair
from pipelines.alerts import SIGNATURE, AlertSigner
from serving.alerts.app import create_alerts_app
from serving.alerts.billing import AlertBilling
from serving.alerts.config import AlertsConfig
from serving.alerts.dispatcher import Dispatcher
from serving.alerts.grants import ServiceKey, grant_proof, public_kind
from serving.alerts.signing import new_secret
from serving.alerts.store import AlertStore, Subscription
from serving.auth import Authenticator, RequestDomain, sign_request
from serving.eip191 import Signer
from serving.market.pricing import InMemoryBilling, alert_category
from serving.market.receipts import ReceiptStore
from serving.market.settlement import Settler
from tests.fixtures.alerts import TRUSTED, signed_alert, wait_until

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

DOMAIN = RequestDomain.local(host="testserver")
INSURER_KEY = "0x" + "4f" * 32
INSURER = Signer(INSURER_KEY).address
VEHICLES = ["v-" + f"{i:032x}" for i in range(1, 4)]
PRODUCER = "cc-aurora"
PRICES = {alert_category("fraud.rollback"): 7, alert_category("wreck.declared"): 3}


class Destination:
    """A receiver answering ``answers`` in turn (then the last one): a fake at the HTTP boundary."""

    def __init__(self, *answers: int) -> None:
        self.answers = answers
        self.received: list[bytes] = []
        self.lock = threading.Lock()

    def transport(self) -> httpx.AsyncBaseTransport:
        async def handle(request: httpx.Request) -> httpx.Response:
            with self.lock:
                self.received.append(await request.aread())
                n = len(self.received)
            status = self.answers[min(n, len(self.answers)) - 1]
            return httpx.Response(status, stream=httpx.ByteStream(b""))  # streamed, as over a socket

        return httpx.MockTransport(handle)


def _alert(vehicle: str, n: int, kind: str = "fraud.rollback") -> dict[str, Any]:
    return signed_alert(vehicle, n, kind, PRODUCER)


class Market:
    def __init__(self, tmp_path: Path) -> None:
        self.billing = InMemoryBilling(PRICES, fee_bps=1000)
        self.receipts = ReceiptStore(tmp_path / "receipts.sqlite", "0x" + "22" * 32)
        self.alerts = AlertBilling(self.billing, self.receipts)


@pytest.fixture
def market(tmp_path: Path) -> Iterator[Market]:
    m = Market(tmp_path)
    yield m
    m.receipts.close()


@pytest.fixture
def deliver(tmp_path: Path, market: Market) -> Iterator[Any]:
    made: list[Dispatcher] = []

    def make(destination: Destination, kinds: tuple[str, ...] = ("fraud.*",)) -> Dispatcher:
        config = AlertsConfig(data_dir=tmp_path, retry_base_s=0.01, retry_max_s=0.05, trusted_raisers=TRUSTED)
        store = AlertStore(tmp_path / f"alerts{len(made)}.sqlite")
        d = Dispatcher(
            config,
            store,
            resolve=lambda host, port: ["93.184.216.34"],
            transport=destination.transport,
            billing=market.alerts,
        )
        made.append(d)
        d.start()
        sub = Subscription(
            "sub_a",
            INSURER,
            "https://claims.insurer.example/hook",
            new_secret(),
            kinds,
            (VEHICLES[0],),
            "",
            0,
        )
        d.store.add(sub)
        d.subscribe(sub)
        return d

    yield make
    for d in made:
        d.stop()
        d.store.close()


def _status(d: Dispatcher) -> str:
    return str(d.store.deliveries("sub_a")[0]["status"])


def test_a_delivered_alert_is_one_receipt_at_the_kinds_price_paying_its_producer(
    deliver: Any, market: Market
) -> None:
    market.billing.fund(INSURER, 100)
    d = deliver(Destination(200))
    alert = _alert(VEHICLES[0], 1)
    assert d.offer(alert) == 1
    wait_until(lambda: _status(d) == "delivered")
    [receipt] = market.receipts.for_consumer(INSURER)
    assert receipt["amount_cents"] == 7  # governance's price of alert.fraud.rollback
    assert receipt["by_producer"] == {PRODUCER: {"rows": 1, "cents": 7}}
    Settler(market.receipts, market.billing).settle_pending()  # settled with the queries' receipts
    assert market.billing.balances[INSURER.lower()] == 93
    assert market.billing.balances[PRODUCER] == 7 - 7 * 1000 // 10_000
    assert market.receipts.pending() == []


def test_an_alert_retried_three_times_then_delivered_is_charged_once(deliver: Any, market: Market) -> None:
    market.billing.fund(INSURER, 100)
    destination = Destination(500, 503, 500, 204)
    d = deliver(destination)
    alert = _alert(VEHICLES[0], 2)
    d.offer(alert)
    wait_until(lambda: _status(d) == "delivered")
    assert len(destination.received) == 4
    assert [r["amount_cents"] for r in market.receipts.for_consumer(INSURER)] == [7]
    d.requeue(d.store.redeliver("sub_a", [alert["id"]], int(time.time() * 1000)))  # sent again on request
    wait_until(lambda: len(destination.received) == 5 and _status(d) == "delivered")
    assert [r["amount_cents"] for r in market.receipts.for_consumer(INSURER)] == [7]
    assert market.alerts.reservations.held(INSURER) == 0  # every hold given back


def test_a_subscriber_without_funds_is_sent_nothing_and_its_alert_is_parked(
    deliver: Any, market: Market
) -> None:
    destination = Destination(200)
    d = deliver(destination)
    d.offer(_alert(VEHICLES[0], 3))
    wait_until(lambda: _status(d) == "failed")
    log = d.store.deliveries("sub_a")[0]
    assert log["last_error"].startswith("cannot pay")
    assert destination.received == []
    assert market.receipts.for_consumer(INSURER) == []
    market.billing.fund(INSURER, 10)  # funded: the parked alert is redelivered and charged
    d.requeue(d.store.redeliver("sub_a", None, int(time.time() * 1000)))
    wait_until(lambda: _status(d) == "delivered")
    assert [r["amount_cents"] for r in market.receipts.for_consumer(INSURER)] == [7]


# ---------------------------------------------------------------------------- subscribing


class Api:
    def __init__(self, tmp_path: Path, market: Market) -> None:
        self.keys = ConsumerKeyPair.generate()
        grants = InMemoryGrantStore()
        grants.put(
            Grant(self.keys.public_key, VEHICLES[0], "owner_identity", 0, 0, "owner:o-" + "0" * 32, b"s")
        )
        config = AlertsConfig(data_dir=tmp_path, trusted_raisers=TRUSTED)
        self.store = AlertStore(tmp_path / "api.sqlite")
        self.dispatcher = Dispatcher(config, self.store, billing=market.alerts)
        self.key = ServiceKey(tmp_path / "service.key")
        auth = Authenticator(ReceiptStore(tmp_path / "nonces.sqlite", "0x" + "33" * 32), 300, DOMAIN)
        resolve = lambda host, port: ["93.184.216.34"]  # noqa: E731
        app = create_alerts_app(
            config,
            self.store,
            self.dispatcher,
            auth,
            self.key,
            grants,
            resolve=resolve,
            billing=market.alerts,
        )
        self.http = TestClient(app)

    def subscribe(self, kinds: list[str], vehicles: list[str] | None = None) -> httpx.Response:
        body: dict[str, Any] = {"url": "https://claims.insurer.example/pcc", "kinds": kinds}
        if vehicles is not None:
            body["vehicles"] = vehicles
            body["grant_key"] = self.keys.public_key.hex()
            body["grant_proof"] = grant_proof(self.keys, self.key.public_hex, INSURER)
        data = orjson.dumps(body)
        headers = sign_request(INSURER_KEY, "POST", "/v1/subscriptions", data, domain=DOMAIN)
        return self.http.post("/v1/subscriptions", content=data, headers=headers)


@pytest.fixture
def api(tmp_path: Path, market: Market) -> Iterator[Api]:
    a = Api(tmp_path, market)
    yield a
    a.store.close()


def test_a_kind_without_a_governance_price_cannot_be_subscribed_to(api: Api) -> None:
    answer = api.subscribe(["fraud.*"], VEHICLES[:1])  # fraud.clone and others have no price
    assert answer.status_code == 400
    assert "not for sale" in answer.json()["message"] and "'alert.fraud.clone'" in answer.json()["message"]
    assert api.subscribe(["fraud.rollback", "wreck.declared"], VEHICLES[:1]).status_code == 201
    assert len(api.store.subscriptions()) == 1


def test_fleet_wide_subscriptions_are_for_public_kinds_only(api: Api, market: Market) -> None:
    assert public_kind("wreck.declared") and public_kind("fraud.rollback")
    assert not public_kind("ownership.changed")
    market.billing._prices[alert_category("ownership.changed")] = 5
    refused = api.subscribe(["wreck.declared", "ownership.changed"])
    assert refused.status_code == 403 and "ownership.changed" in refused.json()["message"]
    assert api.store.subscriptions() == []
    # with a vehicle list and a grant, the protected kind is allowed
    assert api.subscribe(["ownership.changed"], VEHICLES[:1]).status_code == 201
    fleet = api.subscribe(["wreck.declared"])
    assert fleet.status_code == 201 and fleet.json()["fleet_wide"]
    # every car's wreck alert matches it; a protected kind never reaches a fleet-wide subscription
    wreck = _alert(VEHICLES[2], 4, "wreck.declared")
    wreck["data"]["raised_ms"] = int(time.time() * 1000) + 1000
    assert [s.id for s in api.dispatcher.matching(wreck)] == [fleet.json()["id"]]


def _forgeries() -> dict[str, dict[str, Any]]:
    altered = _alert(VEHICLES[0], 9)
    altered["data"]["source_id"] = "cc-forger"  # a genuine alert, its producer changed after signing
    unsigned = _alert(VEHICLES[0], 10)
    del unsigned[SIGNATURE]
    own_key = AlertSigner("f0" * 32).sign(
        {**_alert(VEHICLES[0], 11), "data": {**_alert(VEHICLES[0], 11)["data"], "source_id": "cc-forger"}}
    )
    return {"altered": altered, "unsigned": unsigned, "signed by the forger": own_key}


@pytest.mark.parametrize("forgery", ["altered", "unsigned", "signed by the forger"])
def test_a_forged_alert_naming_a_producer_is_neither_sent_nor_paid(
    deliver: Any, market: Market, forgery: str
) -> None:
    """Attacker: a producer writes an alert of its own making to the alerts topic, to be paid per delivery."""
    market.billing.fund(INSURER, 100)
    destination = Destination(200)
    d = deliver(destination)
    assert d.offer(_forgeries()[forgery]) == 0
    assert d.refused == 1
    time.sleep(0.5)  # what a delivery takes with the fake destination, many times over
    assert destination.received == []
    assert market.receipts.for_consumer(INSURER) == []
    assert d.offer(_alert(VEHICLES[0], 12)) == 1  # the speed layer's own alerts still go out, paid
    wait_until(lambda: len(market.receipts.for_consumer(INSURER)) == 1)
