"""Alert deliveries to real HTTP servers on loopback (the dispatcher's own network path, development
mode): a destination that accepts the connection and never answers times out, is retried and does not
delay a healthy one; a 410 ends the subscription.  And ``pcc serve --alerts``: the subscriptions API
answers beside the queries on one port."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("eth_account")

from pipelines.access import InMemoryGrantStore
from pipelines.alerts import alerts_of
from serving.alerts.config import AlertsConfig
from serving.alerts.dispatcher import Dispatcher
from serving.alerts.mount import with_alerts
from serving.alerts.service import build_service
from serving.alerts.signing import new_secret, verify
from serving.alerts.store import AlertStore, Subscription
from serving.auth import RequestDomain
from tests.fixtures.alerts import TRUSTED, signed

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

VEHICLE = "v-" + "7" * 32


class Receiver:
    """A real HTTP endpoint answering ``status``; ``hold`` set: it reads the request and never answers."""

    def __init__(self, status: int = 204, hold: bool = False) -> None:
        self.status = status
        self.hold = threading.Event()
        if hold:
            self.hold.set()
        self.stop = threading.Event()
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.requests.append((dict(self.headers.items()), body))
                while receiver.hold.is_set() and not receiver.stop.wait(0.05):
                    pass
                try:
                    self.send_response(receiver.status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:  # the dispatcher gave up waiting and closed the connection
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def _wait(predicate: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _alert(n: int) -> dict[str, Any]:
    row = {"vehicle": VEHICLE, "event_id": f"019ca877-0000-7000-8000-{n:012d}", "event_type": "odometer_reading",
           "source_id": "cc-aurora", "event_time": 0, "processed_time": 1, "flags": ["odometer_rollback"]}  # fmt: skip
    return signed(next(alerts_of([row])))


@pytest.fixture
def dispatcher(tmp_path: Path) -> Iterator[Dispatcher]:
    config = AlertsConfig(
        data_dir=tmp_path, development=True, timeout_s=0.3, retry_base_s=0.05, retry_max_s=0.1,
        retry_window_s=60.0, per_destination=1, trusted_raisers=TRUSTED,
    )  # fmt: skip
    d = Dispatcher(config, AlertStore(tmp_path / "alerts.sqlite"))
    d.start()
    yield d
    d.stop()
    d.store.close()


def _subscribe(d: Dispatcher, sub_id: str, url: str) -> Subscription:
    sub = Subscription(sub_id, "0x" + "11" * 20, url, new_secret(), ("fraud.*",), (VEHICLE,), "aa" * 32, 0)
    d.store.add(sub)
    d.subscribe(sub)
    return sub


def test_a_destination_that_never_answers_times_out_is_retried_and_does_not_delay_a_healthy_one(
    dispatcher: Dispatcher,
) -> None:
    stuck, healthy = Receiver(hold=True), Receiver()
    try:
        _subscribe(dispatcher, "sub_stuck", stuck.url)
        sub = _subscribe(dispatcher, "sub_ok", healthy.url)
        for n in range(5):
            dispatcher.offer(_alert(n))
        # one delivery in flight per destination: the stuck one holds only its own queue
        _wait(lambda: len(dispatcher.store.deliveries("sub_ok", status="delivered")) == 5)
        for headers, body in healthy.requests:
            assert verify(sub.secret, headers, body) == headers["webhook-id"]
        stuck_log = lambda: dispatcher.store.deliveries("sub_stuck")  # noqa: E731
        _wait(lambda: max(d["attempts"] for d in stuck_log()) >= 2)  # timed out, tried again
        assert not any(d["status"] == "delivered" for d in stuck_log())
        assert any((d["last_error"] or "").startswith("no answer within 0.3 s") for d in stuck_log())
        ids = [h["webhook-id"] for h, _ in stuck.requests]
        assert len(ids) > len(set(ids))  # an alert sent again keeps its webhook-id
        stuck.hold.clear()  # it answers again: everything owed arrives
        _wait(lambda: len(dispatcher.store.deliveries("sub_stuck", status="delivered")) == 5)
    finally:
        stuck.close()
        healthy.close()


def test_a_410_from_a_real_endpoint_ends_its_subscription(dispatcher: Dispatcher) -> None:
    gone, other = Receiver(status=410), Receiver()
    try:
        _subscribe(dispatcher, "sub_gone", gone.url)
        _subscribe(dispatcher, "sub_other", other.url)
        dispatcher.offer(_alert(1))
        _wait(lambda: not dispatcher.store.get("sub_gone").active)
        assert dispatcher.offer(_alert(2)) == 1  # owed to the other subscription only
        _wait(lambda: len(dispatcher.store.deliveries("sub_other", status="delivered")) == 2)
        assert gone.count() == 1
        assert dispatcher.store.deliveries("sub_gone")[0]["last_status"] == 410
    finally:
        gone.close()
        other.close()


def test_pcc_serve_alerts_answers_subscriptions_beside_the_queries(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    queries = Starlette(routes=[Route("/v1/domain", lambda r: PlainTextResponse("queries"))])
    service = build_service(
        AlertsConfig(data_dir=tmp_path), RequestDomain.local(host="testserver"), InMemoryGrantStore()
    )
    try:
        with TestClient(with_alerts(queries, service.app)) as client:
            assert client.get("/v1/domain").text == "queries"
            key = client.get("/v1/alerts/key")
            assert key.status_code == 200 and "fraud.clocking" in key.text
            assert client.post("/v1/subscriptions", content=b"{}").status_code == 401  # unsigned
    finally:
        service.store.close()
        service.auth.store.close()


def test_the_specifications_own_libraries_verify_and_parse_a_delivery(dispatcher: Dispatcher) -> None:
    webhooks = pytest.importorskip("standardwebhooks.webhooks")
    cloudevents_http = pytest.importorskip("cloudevents.v1.http")
    receiver = Receiver()
    try:
        sub = _subscribe(dispatcher, "sub_std", receiver.url)
        alert = _alert(7)
        dispatcher.offer(alert)
        _wait(lambda: receiver.count() == 1)
        headers, body = receiver.requests[0]
        assert webhooks.Webhook(sub.secret).verify(body, headers) == alert
        event = cloudevents_http.from_http(headers, body)  # the CloudEvents SDK reads it as structured mode
        assert (event["id"], event["type"], event["subject"]) == (alert["id"], "pcc.fraud.rollback", VEHICLE)
        assert event.data == alert["data"]
        with pytest.raises(webhooks.WebhookVerificationError):
            webhooks.Webhook(sub.secret).verify(body.replace(b"odometer", b"odomoter"), headers)
    finally:
        receiver.close()
