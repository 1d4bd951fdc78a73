"""Alert webhooks without services: the signature a receiver checks, the destinations a subscription
may name (SSRF), the backoff, the per-destination queues (a fake HTTP transport at the boundary), and the
subscriptions API's refusals (Starlette's test client): unsigned, oversized, not granted, private URL."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("eth_account")

from pipelines.access import Grant, InMemoryGrantStore
from pipelines.access.wrap import ConsumerKeyPair
from pipelines.alerts import alert_id, alerts_of, kind_matches
from serving.alerts.app import create_alerts_app
from serving.alerts.config import AlertsConfig
from serving.alerts.destinations import check_url
from serving.alerts.dispatcher import CheckedBackend, Dispatcher, retry_delay
from serving.alerts.errors import DestinationRefused, GrantKeyRefused
from serving.alerts.grants import ServiceKey, grant_proof
from serving.alerts.signing import WebhookVerificationError, new_secret, sign, signature, verify
from serving.alerts.store import AlertStore, Subscription
from serving.auth import Authenticator, RequestDomain, sign_request
from serving.eip191 import Signer
from serving.market.receipts import ReceiptStore
from tests.fixtures.alerts import TRUSTED, signed_alert, wait_until

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

DOMAIN = RequestDomain.local(host="testserver")
INSURER_KEY = "0x" + "4f" * 32
OTHER_KEY = "0x" + "5e" * 32
VEHICLES = ["v-" + f"{i:032x}" for i in range(1, 6)]


def _resolver(table: dict[str, list[str]]) -> Any:
    return lambda host, port: table.get(host) or [host]


# ---------------------------------------------------------------------------- signatures


def test_the_signature_is_the_standard_webhooks_one() -> None:
    # the specification's example (standard-webhooks/standard-webhooks, libraries' tests)
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


def test_a_receiver_accepts_a_signed_delivery_and_refuses_a_forged_or_replayed_one() -> None:
    secret = new_secret()
    body = b'{"id":"a1","type":"pcc.fraud.rollback"}'
    headers = sign(secret, "a1", body)
    assert verify(secret, headers, body) == "a1"
    with pytest.raises(WebhookVerificationError, match="no webhook-signature"):
        verify(secret, headers, body.replace(b"rollback", b"clone"))  # body altered
    with pytest.raises(WebhookVerificationError, match="no webhook-signature"):
        verify(new_secret(), headers, body)  # signed by someone without the secret
    with pytest.raises(WebhookVerificationError, match="more than 300 s"):
        verify(secret, headers, body, now=int(headers["webhook-timestamp"]) + 301)  # replayed later
    forged_id = {**headers, "webhook-id": "a2"}
    with pytest.raises(WebhookVerificationError):
        verify(secret, forged_id, body)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify(secret, {}, body)


# ---------------------------------------------------------------------------- destinations (SSRF)


@pytest.mark.parametrize(
    ("url", "resolved"),
    [
        ("https://127.0.0.1/hook", None),
        ("https://localhost/hook", ["127.0.0.1", "::1"]),
        ("https://10.1.2.3/hook", None),
        ("https://169.254.169.254/latest/meta-data", None),  # a cloud's metadata service
        ("https://[::ffff:192.168.0.1]/hook", None),
        ("https://100.64.0.1/hook", None),
        ("https://[fd00::1]/hook", None),
        ("https://0.0.0.0/hook", None),
        ("https://hooks.insurer.example/x", ["93.184.216.34", "10.0.0.7"]),  # one address inside is enough
        ("https://rebind.example/x", ["192.168.1.20"]),
    ],
)
def test_production_refuses_a_destination_inside_a_network(url: str, resolved: list[str] | None) -> None:
    host = httpx.URL(url).host
    resolve = _resolver({host: resolved} if resolved else {})
    with pytest.raises(DestinationRefused, match="non-public address"):
        check_url(url, development=False, resolve=resolve)


@pytest.mark.parametrize(
    ("url", "development", "reason"),
    [
        ("http://hooks.insurer.example/x", False, "must be https://"),
        ("http://127.0.0.1:9000/x", False, "must be https://"),
        ("http://hooks.insurer.example/x", True, "only to loopback"),
        ("ftp://hooks.insurer.example/x", False, "must be https://"),
        ("https://user:pw@hooks.insurer.example/x", False, "credentials"),
        ("https:///x", False, "no host"),
        ("https://hooks.insurer.example:99999/x", False, "does not parse"),
    ],
)
def test_a_destination_that_is_not_https_is_refused(url: str, development: bool, reason: str) -> None:
    resolve = _resolver({"hooks.insurer.example": ["93.184.216.34"]})
    with pytest.raises(DestinationRefused, match=reason):
        check_url(url, development=development, resolve=resolve)


def test_public_https_always_and_loopback_only_in_development() -> None:
    resolve = _resolver({"hooks.insurer.example": ["93.184.216.34"], "localhost": ["127.0.0.1"]})
    assert check_url("https://hooks.insurer.example/pcc", development=False, resolve=resolve) == [
        "93.184.216.34"
    ]
    assert check_url("http://127.0.0.1:8700/hook", development=True, resolve=resolve) == ["127.0.0.1"]
    assert check_url("https://localhost/hook", development=True, resolve=resolve) == ["127.0.0.1"]
    with pytest.raises(DestinationRefused):
        check_url("https://10.0.0.1/hook", development=True, resolve=resolve)  # loopback only, not a LAN


@settings(max_examples=150, deadline=None)
@given(st.ip_addresses())
def test_production_accepts_an_address_exactly_when_it_is_public(address: Any) -> None:
    host = f"[{address}]" if address.version == 6 else str(address)
    url = f"https://{host}/hook"
    mapped = address.ipv4_mapped if address.version == 6 and address.ipv4_mapped else address
    public = mapped.is_global and not mapped.is_multicast
    try:
        check_url(url, development=False, resolve=lambda h, p: [str(address)])
    except DestinationRefused:
        assert not public, f"{address} is public"
    else:
        assert public and not ipaddress.ip_address(str(mapped)).is_private


# ---------------------------------------------------------------------------- backoff


def test_retries_back_off_exponentially_with_jitter_up_to_a_cap() -> None:
    low = [retry_delay(n, 1.0, 60.0, rand=lambda: 0.0) for n in range(1, 10)]
    high = [retry_delay(n, 1.0, 60.0, rand=lambda: 0.999999) for n in range(1, 10)]
    assert low == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert [round(h) for h in high] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


# ---------------------------------------------------------------------------- alerts raised


def _row(vehicle: str, flags: list[str], event_type: str = "odometer_reading") -> dict[str, Any]:
    return {
        "event_id": "019ca877-0000-7000-8000-00000000000" + str(len(flags)),
        "event_type": event_type,
        "source_id": "cc-aurora",
        "vehicle": vehicle,
        "event_time": 1_767_000_000_000,
        "processed_time": 1_767_000_001_000,
        "flags": flags,
        "payload": '{"owner":{"name":"Jane"}}',
    }


def test_alerts_name_the_vehicle_by_pseudonym_and_keep_a_stable_id() -> None:
    rows = [
        _row(VEHICLES[0], ["odometer_rollback", "duplicate_event"]),
        _row(VEHICLES[1], [], "wreck_declaration"),
        _row(VEHICLES[2], []),
    ]
    alerts = list(alerts_of(rows))
    assert [(a["data"]["kind"], a["subject"]) for a in alerts] == [
        ("fraud.rollback", VEHICLES[0]),
        ("wreck.declared", VEHICLES[1]),
    ]
    assert alerts[0]["id"] == alert_id(rows[0]["event_id"], "fraud.rollback") == next(alerts_of(rows))["id"]
    text = orjson.dumps(alerts).decode()
    assert "Jane" not in text and "payload" not in text and "owner" not in text
    assert kind_matches("fraud.*", "fraud.clone") and not kind_matches("fraud.*", "wreck.declared")


# ---------------------------------------------------------------------------- dispatcher


class FakeDestinations:
    """Destinations answered by a function of the host: a fake at the HTTP boundary."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    def transport(self) -> httpx.AsyncBaseTransport:
        async def handle(request: httpx.Request) -> httpx.Response:
            body = await request.aread()
            status = await self.answer(request.url.host, len(self.seen(request.url.host)))
            with self.lock:
                self.received.append((request.url.host, dict(request.headers), body))
            return httpx.Response(status, stream=httpx.ByteStream(b""))  # streamed, as over a socket

        return httpx.MockTransport(handle)

    def seen(self, host: str) -> list[tuple[str, dict[str, str], bytes]]:
        with self.lock:
            return [r for r in self.received if r[0] == host]


def _config(tmp_path: Path, **kw: Any) -> AlertsConfig:
    values: dict[str, Any] = dict(
        data_dir=tmp_path, development=False, retry_base_s=0.01, retry_max_s=0.05, trusted_raisers=TRUSTED
    )
    values.update(kw)
    return AlertsConfig(**values)


def _sub(sub_id: str, host: str, vehicles: list[str], kinds: tuple[str, ...] = ("fraud.*",)) -> Subscription:
    return Subscription(
        sub_id, "0x" + "11" * 20, f"https://{host}/hook", new_secret(), kinds, tuple(vehicles), "aa" * 32, 0
    )


@pytest.fixture
def dispatch(tmp_path: Path) -> Iterator[Any]:
    made: list[Dispatcher] = []

    def make(fakes: FakeDestinations, grants: Any = None, **kw: Any) -> Dispatcher:
        store = AlertStore(tmp_path / f"alerts{len(made)}.sqlite")
        inside = {"inside.example": ["10.0.0.9"]}
        resolve = lambda host, port: inside.get(host, ["93.184.216.34"])  # noqa: E731
        d = Dispatcher(
            _config(tmp_path, **kw), store, resolve=resolve, transport=fakes.transport, grants=grants
        )
        made.append(d)
        d.start()
        return d

    yield make
    for d in made:
        d.stop()
        d.store.close()


def test_a_failing_destination_is_retried_until_it_answers_and_signs_each_attempt(dispatch: Any) -> None:
    async def answer(host: str, seen: int) -> int:
        return 500 if seen < 3 else 200

    fakes = FakeDestinations(answer)
    d = dispatch(fakes)
    sub = _sub("sub_a", "claims.insurer.example", [VEHICLES[0]])
    d.store.add(sub)
    d.subscribe(sub)
    alert = signed_alert(VEHICLES[0], 1)
    assert d.offer(alert) == 1
    assert d.offer(alert) == 0  # read twice from the topic: owed once
    wait_until(lambda: d.store.deliveries("sub_a")[0]["status"] == "delivered")
    attempts = fakes.seen("claims.insurer.example")
    assert len(attempts) == 4
    assert {h["webhook-id"] for _, h, _ in attempts} == {alert["id"]}  # stable id across retries
    for _, headers, body in attempts:
        assert verify(sub.secret, headers, body) == alert["id"]
    assert orjson.loads(attempts[0][2])["data"]["vehicle"] == VEHICLES[0]
    log = d.store.deliveries("sub_a")[0]
    assert (log["attempts"], log["last_status"]) == (4, 200)


def test_a_destination_that_never_answers_does_not_hold_a_healthy_one(dispatch: Any) -> None:
    release = asyncio.Event()

    async def answer(host: str, seen: int) -> int:
        if host == "stuck.example":
            await release.wait()
        return 204

    fakes = FakeDestinations(answer)
    d = dispatch(fakes, per_destination=2, timeout_s=60.0)
    stuck, healthy = _sub("sub_stuck", "stuck.example", VEHICLES), _sub("sub_ok", "ok.example", VEHICLES)
    for s in (stuck, healthy):
        d.store.add(s)
        d.subscribe(s)
    for n in range(20):
        d.offer(signed_alert(VEHICLES[n % 5], n))
    wait_until(lambda: len(d.store.deliveries("sub_ok", status="delivered")) == 20)
    assert len(d.store.deliveries("sub_stuck", status="delivered")) == 0  # its two workers are still waiting
    d._loop.call_soon_threadsafe(release.set)
    wait_until(lambda: len(d.store.deliveries("sub_stuck", status="delivered")) == 20)


def test_410_ends_the_subscription_and_a_parked_delivery_can_be_redelivered(dispatch: Any) -> None:
    answers = {"gone.example": 410, "down.example": 503}

    async def answer(host: str, seen: int) -> int:
        return answers[host]

    fakes = FakeDestinations(answer)
    d = dispatch(fakes, retry_window_s=0.2)
    gone, down = (
        _sub("sub_gone", "gone.example", [VEHICLES[0]]),
        _sub("sub_down", "down.example", [VEHICLES[0]]),
    )
    for s in (gone, down):
        d.store.add(s)
        d.subscribe(s)
    d.offer(signed_alert(VEHICLES[0], 1))
    wait_until(lambda: not d.store.get("sub_gone").active)
    assert d.offer(signed_alert(VEHICLES[0], 2)) == 1  # only the subscription still active owes it
    wait_until(lambda: len(d.store.deliveries("sub_down", status="failed")) == 2)
    assert len(fakes.seen("gone.example")) == 1
    answers["down.example"] = 200
    requeued = d.store.redeliver("sub_down", None, int(time.time() * 1000))
    d.requeue(requeued)
    wait_until(lambda: len(d.store.deliveries("sub_down", status="delivered")) == 2)


def test_a_destination_that_comes_to_resolve_inside_is_not_called(dispatch: Any) -> None:
    async def answer(host: str, seen: int) -> int:
        return 200

    fakes = FakeDestinations(answer)
    d = dispatch(fakes)
    sub = _sub("sub_in", "inside.example", [VEHICLES[0]])  # stored before its name resolved inside
    d.store.add(sub)
    d.subscribe(sub)
    d.offer(signed_alert(VEHICLES[0], 1))
    wait_until(lambda: d.store.deliveries("sub_in")[0]["status"] == "failed")
    assert fakes.seen("inside.example") == []
    assert "non-public" in d.store.deliveries("sub_in")[0]["last_error"]


class _Listener:
    """A TCP port on loopback that records whether anyone connected."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]

    def connected(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except TimeoutError:
            return False
        conn.close()
        return True


def test_a_name_that_rebinds_inside_between_check_and_connect_reaches_nothing() -> None:
    """DNS rebinding: the name answers a public address to the check, then loopback to the connection."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    resolve = lambda host, port: next(answers)  # noqa: E731
    listener = _Listener()
    check_url(f"https://rebind.example:{listener.port}/hook", development=False, resolve=resolve)
    backend = CheckedBackend(resolve, development=False)
    with pytest.raises(httpcore.ConnectError, match="non-public address"):
        asyncio.run(backend.connect_tcp("rebind.example", listener.port, timeout=2))
    assert not listener.connected()


def test_the_connection_goes_to_the_checked_address_not_to_a_second_lookup() -> None:
    # a name no DNS knows: only the resolver the check used can send the connection to the listener
    listener = _Listener()
    backend = CheckedBackend(lambda host, port: ["127.0.0.1"], development=True)

    async def connect() -> None:
        stream = await backend.connect_tcp("receiver.invalid", listener.port, timeout=2)
        await stream.aclose()

    asyncio.run(connect())
    assert listener.connected()


def test_a_revoked_grant_stops_the_alerts_of_that_vehicle(dispatch: Any) -> None:
    async def answer(host: str, seen: int) -> int:
        return 200

    keys = ConsumerKeyPair.generate()
    grants = InMemoryGrantStore()
    for v in VEHICLES[:2]:
        grants.put(Grant(keys.public_key, v, "owner_identity", 0, 0, "owner:o-" + "0" * 32, b"s"))
    d = dispatch(FakeDestinations(answer), grants=grants)
    sub = _sub("sub_g", "g.example", VEHICLES[:2])
    sub = Subscription(
        sub.id, sub.account, sub.url, sub.secret, sub.kinds, sub.vehicles, keys.public_key.hex(), 0
    )
    d.store.add(sub)
    d.subscribe(sub)
    assert d.offer(signed_alert(VEHICLES[0], 1)) == 1
    grants.revoke(VEHICLES[0], "owner_identity", keys.public_key)
    assert d.offer(signed_alert(VEHICLES[0], 2)) == 0  # the owner took the grant back
    assert d.offer(signed_alert(VEHICLES[1], 3)) == 1


def test_kinds_and_vehicles_filter_what_a_subscription_receives(dispatch: Any) -> None:
    async def answer(host: str, seen: int) -> int:
        return 200

    fakes = FakeDestinations(answer)
    d = dispatch(fakes)
    sub = _sub("sub_k", "k.example", [VEHICLES[0]], ("wreck.declared",))
    d.store.add(sub)
    d.subscribe(sub)
    assert d.offer(signed_alert(VEHICLES[0], 1, "fraud.clone")) == 0
    assert d.offer(signed_alert(VEHICLES[1], 2, "wreck.declared")) == 0
    assert d.offer(signed_alert(VEHICLES[0], 3, "wreck.declared")) == 1


# ---------------------------------------------------------------------------- subscriptions API


class Service:
    def __init__(self, tmp_path: Path, grants: InMemoryGrantStore) -> None:
        self.config = _config(tmp_path, max_body_bytes=4096)
        self.store = AlertStore(tmp_path / "api.sqlite")
        self.dispatcher = Dispatcher(self.config, self.store)
        self.key = ServiceKey(tmp_path / "service.key")
        auth = Authenticator(ReceiptStore(tmp_path / "nonces.sqlite", "0x" + "22" * 32), 300, DOMAIN)
        resolve = _resolver({"claims.insurer.example": ["93.184.216.34"], "intranet.example": ["10.2.0.4"]})
        app = create_alerts_app(
            self.config, self.store, self.dispatcher, auth, self.key, grants, resolve=resolve
        )
        self.http = TestClient(app)

    def post(self, body: dict[str, Any], key: str = INSURER_KEY, raw: bytes | None = None) -> httpx.Response:
        data = raw if raw is not None else orjson.dumps(body)
        headers = sign_request(key, "POST", "/v1/subscriptions", data, domain=DOMAIN)
        return self.http.post("/v1/subscriptions", content=data, headers=headers)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Service, ConsumerKeyPair]]:
    keys = ConsumerKeyPair.generate()
    grants = InMemoryGrantStore()
    for v in VEHICLES[:3]:
        grants.put(Grant(keys.public_key, v, "owner_identity", 0, 0, "owner:o-" + "0" * 32, b"s"))
    grants.put(
        Grant(keys.public_key, VEHICLES[3], "owner_identity", 1, 0, "owner:o-" + "0" * 32, b"s")
    )  # expired
    service = Service(tmp_path, grants)
    yield service, keys
    service.store.close()


def _body(
    service: Service,
    keys: ConsumerKeyPair,
    vehicles: list[str],
    account_key: str = INSURER_KEY,
    url: str = "https://claims.insurer.example/pcc",
) -> dict[str, Any]:
    account = Signer(account_key).address
    return {
        "url": url,
        "kinds": ["fraud.*", "wreck.declared"],
        "vehicles": vehicles,
        "grant_key": keys.public_key.hex(),
        "grant_proof": grant_proof(keys, service.key.public_hex, account),
    }


def test_an_insurer_subscribes_to_the_vehicles_it_holds_grants_on(api: Any) -> None:
    service, keys = api
    answer = service.post(_body(service, keys, VEHICLES[:3]))
    assert answer.status_code == 201, answer.text
    doc = answer.json()
    assert doc["secret"].startswith("whsec_") and doc["vehicles"] == 3 and doc["active"]
    path = "/v1/subscriptions"
    listed = service.http.get(path, headers=sign_request(INSURER_KEY, "GET", path, b"", domain=DOMAIN)).json()
    assert [s["id"] for s in listed["subscriptions"]] == [doc["id"]]
    assert "secret" not in listed["subscriptions"][0]
    theirs = service.http.get(path, headers=sign_request(OTHER_KEY, "GET", path, b"", domain=DOMAIN)).json()
    assert theirs["subscriptions"] == []
    other_log = f"/v1/subscriptions/{doc['id']}/deliveries"
    refused = service.http.get(
        other_log, headers=sign_request(OTHER_KEY, "GET", other_log, b"", domain=DOMAIN)
    )
    assert refused.status_code == 404


def test_a_vehicle_without_a_current_grant_is_refused_by_its_position(api: Any) -> None:
    service, keys = api
    for vehicles, position in (([VEHICLES[0], VEHICLES[4]], 2), ([VEHICLES[3], VEHICLES[0]], 1)):
        answer = service.post(_body(service, keys, vehicles))
        assert answer.status_code == 403
        assert answer.json()["position"] == position
        assert f"vehicle {position} of the list" in answer.json()["message"]
        assert vehicles[position - 1] not in answer.text
    assert service.store.subscriptions() == []


def test_someone_elses_grant_key_cannot_be_claimed(api: Any) -> None:
    service, keys = api
    thief = ConsumerKeyPair.generate()
    body = _body(service, keys, VEHICLES[:1])
    body["grant_proof"] = grant_proof(thief, service.key.public_hex, Signer(OTHER_KEY).address)
    assert service.post(body, key=OTHER_KEY).status_code == 403
    replayed = _body(service, keys, VEHICLES[:1])  # the insurer's proof, sent by another account
    answer = service.post(replayed, key=OTHER_KEY)
    assert answer.status_code == 403 and "grant_proof" in answer.json()["message"]
    with pytest.raises(GrantKeyRefused):
        service.key.check_proof(keys.public_key.hex(), "00" * 32, Signer(INSURER_KEY).address)


def test_unsigned_oversized_and_private_destinations_are_refused(api: Any) -> None:
    service, keys = api
    body = orjson.dumps(_body(service, keys, VEHICLES[:1]))
    assert service.http.post("/v1/subscriptions", content=body).status_code == 401
    forged = sign_request(OTHER_KEY, "POST", "/v1/subscriptions", body, domain=DOMAIN)
    forged["X-PCC-Account"] = Signer(INSURER_KEY).address
    assert service.http.post("/v1/subscriptions", content=body, headers=forged).status_code == 401
    huge = b"{" + b" " * 5000 + b"}"
    assert service.post({}, raw=huge).status_code == 413
    inside = service.post(_body(service, keys, VEHICLES[:1], url="https://intranet.example/hook"))
    assert inside.status_code == 400 and "non-public" in inside.json()["message"]
    plain = service.post(_body(service, keys, VEHICLES[:1], url="http://claims.insurer.example/hook"))
    assert plain.status_code == 400 and "https://" in plain.json()["message"]
    vin = service.post(_body(service, keys, ["1HGCM82633A004352"]))
    assert vin.status_code == 400 and "1HGCM82633A004352" not in vin.text
    unknown = {**_body(service, keys, VEHICLES[:1]), "kinds": ["fraud.everything_else"]}
    assert service.post(unknown).status_code == 400
    assert service.store.subscriptions() == []


def test_webhook_secrets_rest_sealed_and_a_copied_database_does_not_give_them_away(tmp_path: Path) -> None:
    """Attacker: a stolen backup of the subscriptions database, to sign alerts the insurer would accept."""
    import shutil
    import sqlite3

    secret = new_secret()
    store = AlertStore(tmp_path / "svc" / "alerts.sqlite")
    store.add(Subscription(
        "sub_a", "0x" + "11" * 20, "https://claims.insurer.example/hook", secret, ("fraud.*",),
        (VEHICLES[0],), "aa" * 32, 0,
    ))  # fmt: skip
    assert store.get("sub_a").secret == secret  # the dispatcher signs with it as before
    store.close()
    raw = b"".join(f.read_bytes() for f in (tmp_path / "svc").glob("alerts.sqlite*"))
    assert secret.encode() not in raw and secret.removeprefix("whsec_").encode() not in raw
    assert (tmp_path / "svc" / "subscription-secrets.key").stat().st_mode & 0o777 == 0o600

    stolen = tmp_path / "stolen"
    stolen.mkdir()
    shutil.copy(tmp_path / "svc" / "alerts.sqlite", stolen / "alerts.sqlite")
    with pytest.raises(PermissionError, match="does not open with this store's key"):
        AlertStore(stolen / "alerts.sqlite").get("sub_a")

    # a subscription written before secrets were sealed still delivers
    db = sqlite3.connect(tmp_path / "svc" / "alerts.sqlite")
    db.execute("UPDATE subscriptions SET secret = ? WHERE id = 'sub_a'", (secret,))
    db.commit()
    db.close()
    assert AlertStore(tmp_path / "svc" / "alerts.sqlite").get("sub_a").secret == secret
