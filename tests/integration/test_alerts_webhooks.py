"""Alert webhooks end to end on the real broker, a real chain node and real HTTP receivers.

An insurer subscribes (signed for the deployment's EIP-712 domain on anvil) two endpoints to
``fraud.*`` and ``wreck.declared`` for its fleet; the speed layer (``pcc speed run``) flags odometer
rollbacks; each flag of the fleet reaches the healthy endpoint once, with a valid Standard Webhooks
signature, while the other endpoint answers 500 — retried, and not holding the healthy one; once it
recovers it gets every alert, the delivery log shows the retries; a car outside the fleet raises
no delivery."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

pytest.importorskip("apache_beam")

from infra.chain.node import NodeInfo
from infra.procs import free_ports
from ledger.client import LedgerClient
from ledger.onboarding import deploy_consortium
from pipelines.access import Grant, SqliteGrantStore
from pipelines.access.wrap import ConsumerKeyPair
from pipelines.alerts import AlertSigner, raiser_key_path, trusted_raisers
from pipelines.settings import LedgerSettings, Settings
from serving.alerts.client import AlertsClient
from serving.alerts.config import AlertsConfig
from serving.alerts.service import AlertService, build_service
from serving.alerts.signing import WebhookVerificationError, verify
from serving.ingest.wiring import ledger_domain
from speed.roots import InMemoryRoots
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.synthetic import SyntheticSource, vehicle, wire

pytestmark = pytest.mark.integration

DAY = 86_400_000
PCC = [sys.executable, "-c", "import sys; from pipelines.cli.main import main; sys.exit(main())"]
INSURER_KEY = "0x" + "a1" * 32
FLEET = [vehicle(i) for i in range(4)]
OUTSIDE = vehicle(9)


class Receiver:
    """An insurer's endpoint: a real HTTP server verifying every delivery with the subscription's secret."""

    def __init__(self, failing: bool = False) -> None:
        self.failing = threading.Event()
        if failing:
            self.failing.set()
        self.secret = ""
        self.accepted: dict[str, dict[str, Any]] = {}  # webhook-id -> alert
        self.attempts = 0
        self.forged = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.attempts += 1
                try:
                    msg_id = verify(receiver.secret, dict(self.headers.items()), body)
                except WebhookVerificationError:
                    with receiver.lock:
                        receiver.forged += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                if receiver.failing.is_set():
                    self.send_response(500)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.accepted.setdefault(msg_id, orjson.loads(body))  # deduplicated on webhook-id
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/pcc/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Running:
    """``pcc alerts serve`` in a thread of this process, on a free port."""

    def __init__(self, service: AlertService, port: int) -> None:
        self.service = service
        self.url = f"http://127.0.0.1:{port}"
        self._server = uvicorn.Server(
            uvicorn.Config(service.app, host="127.0.0.1", port=port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> Running:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline, "the alert service did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def _wait(predicate: Any, what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def platform(kafka_broker: KafkaBroker, anvil_node: NodeInfo, tmp_path: Path) -> Iterator[dict[str, Any]]:
    prefix = "a" + uuid.uuid4().hex[:8] + "."
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        admin.create_topics(
            [NewTopic(prefix + t, 1, 1) for t in ("telemetry", "garage", "insurer", "deadletter")]
        )
    finally:
        admin.close()
    settings = Settings(
        data_dir=tmp_path / "platform",
        kafka=kafka_broker.settings.kafka.model_copy(update={"topic_prefix": prefix}),
        ledger=LedgerSettings(rpc_url=anvil_node.url, chain="anvil"),
    )
    deploy_consortium(settings)
    insurer_keys = ConsumerKeyPair.generate()
    grants = SqliteGrantStore(tmp_path / "grants.sqlite")
    for v in FLEET:  # the owners granted the insurer; how grants are made is docs/access.md's business
        grants.put(Grant(insurer_keys.public_key, v, "owner_identity", 0, 0, "owner:o-" + "0" * 32, b"sig"))
    (port,) = free_ports(1)
    config = AlertsConfig(
        data_dir=tmp_path / "alerts",
        bootstrap=kafka_broker.bootstrap,
        topic=prefix + "alerts",
        port=port,
        development=True,  # the receivers are on this machine
        retry_base_s=0.2,
        retry_max_s=1.0,
        # the speed layer's signing key, as an operator lists it (alerts.trusted_raisers)
        trusted_raisers=(AlertSigner.from_file(raiser_key_path(tmp_path / "speed")).public_hex,),
    )
    domain = ledger_domain(LedgerClient.from_settings(settings), config.request_host)
    service = build_service(config, domain, grants)
    with Running(service, port) as running:
        yield {
            "settings": settings,
            "prefix": prefix,
            "url": running.url,
            "keys": insurer_keys,
            "service": service,
        }
    grants.close()


def _speed_run(bootstrap: str, prefix: str, data_dir: Path, roots: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCC__") and k != "PCC_CONFIG"}
    env.update(
        PCC__KAFKA__BOOTSTRAP=bootstrap,
        PCC__KAFKA__TOPIC_PREFIX=prefix,
        PCC__DATA_DIR=str(data_dir),
        PCC__SPEED__PROOF_WAIT_S="1",
    )
    out = subprocess.run(
        [*PCC, "speed", "run", "--metrics-port", "0", "--roots-file", str(roots), "--until-idle", "3"],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout.decode()[-2000:] + out.stderr.decode()[-2000:]


def test_a_flag_raised_reaches_the_insurer_signed_and_a_failing_endpoint_does_not_hold_the_healthy_one(
    platform: dict[str, Any], kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    healthy, failing = Receiver(), Receiver(failing=True)
    try:
        with AlertsClient(platform["url"], INSURER_KEY) as client:
            subs = {}
            for name, receiver in (("healthy", healthy), ("failing", failing)):
                sub = client.subscribe(receiver.url, ["fraud.*", "wreck.declared"], FLEET, platform["keys"])
                receiver.secret = sub["secret"]
                subs[name] = sub["id"]

            roots = InMemoryRoots()
            src = SyntheticSource("cc-aurora", roots, checkpoint_every=64)
            start = int(time.time() * 1000) - 30 * DAY
            events = []
            for day in range(10):
                for i, v in enumerate([*FLEET, OUTSIDE]):
                    events.append(src.odometer(v, 10_000 + i * 1000 + day * 50, start + day * DAY + i))
            # rollbacks: two cars of the fleet and one outside it
            for n, v in enumerate((FLEET[0], FLEET[2], OUTSIDE)):
                events.append(src.odometer(v, 2_000, start + 12 * DAY + n))
            for env in events:
                src.append(env)
            src.checkpoint()
            roots.save(tmp_path / "roots.json")
            producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
            for env in events:
                producer.send(platform["prefix"] + "telemetry", key=env["vehicle"].encode(), value=wire(env))
            producer.flush()
            producer.close()

            _speed_run(
                kafka_broker.bootstrap, platform["prefix"], tmp_path / "speed", tmp_path / "roots.json"
            )

            _wait(lambda: len(healthy.accepted) == 2, "the healthy endpoint did not get both alerts")
            assert sorted(a["subject"] for a in healthy.accepted.values()) == sorted([FLEET[0], FLEET[2]])
            assert {a["type"] for a in healthy.accepted.values()} == {"pcc.fraud.rollback"}
            assert healthy.attempts == 2 and healthy.forged == 0  # once each, every signature valid
            assert failing.accepted == {} and failing.attempts >= 1  # still failing, not holding the other

            _wait(lambda: failing.attempts >= 4, "the failing endpoint was not retried")
            failing.failing.clear()  # the endpoint recovers
            _wait(lambda: len(failing.accepted) == 2, "the recovered endpoint did not get every alert")
            assert failing.accepted.keys() == healthy.accepted.keys()  # same webhook-id at both
            log = client.deliveries(subs["failing"])
            assert {d["status"] for d in log} == {"delivered"}
            assert max(d["attempts"] for d in log) > 1
            assert all(d["vehicle"] in FLEET for d in log)
            text = orjson.dumps(list(healthy.accepted.values())).decode()
            assert OUTSIDE not in text and "vin" not in text.lower()
    finally:
        healthy.close()
        failing.close()


def test_a_clocking_verdict_of_the_batch_layer_reaches_the_insurer_once(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """A published batch version whose fraud_scores find gradual clocking the previous version did not:
    ``pcc batch run``'s hook sends it to the real broker's alerts topic, the alert service delivers it;
    a second run over the same version sends nothing."""
    from batch.alerts import after_run
    from batch.config import BatchConfig
    from batch.publish import read_current
    from serving.alerts.dispatcher import Dispatcher
    from serving.alerts.feed import AlertFeed
    from serving.alerts.signing import new_secret
    from serving.alerts.store import AlertStore, Subscription
    from tests.unit.batch.test_batch_alerts import CLOCKED, _version

    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = kafka_broker.settings.model_copy(
        update={"kafka": kafka_broker.settings.kafka.model_copy(update={"topic_prefix": prefix})}
    )
    batch = BatchConfig(master_dataset=tmp_path / "master", batch_dir=tmp_path / "batch")
    _version(batch, "v1", {})
    previous = read_current(batch)
    _version(batch, "v2", {CLOCKED: {"gradual_clocking": [3, 5, 7]}})

    receiver = Receiver()
    config = AlertsConfig(
        data_dir=tmp_path / "alerts",
        bootstrap=kafka_broker.bootstrap,
        topic=prefix + "alerts",
        development=True,
        trusted_raisers=trusted_raisers(settings),  # the batch layer's key, this deployment's default
    )
    store = AlertStore(tmp_path / "alerts.sqlite")
    dispatcher = Dispatcher(config, store)
    feed = AlertFeed(config, dispatcher)
    receiver.secret = new_secret()
    sub = Subscription(
        "sub_b", "0x" + "11" * 20, receiver.url, receiver.secret, ("fraud.*",), (CLOCKED,), "aa" * 32, 0
    )
    store.add(sub)
    dispatcher.subscribe(sub)
    dispatcher.start()
    feed.start()
    try:
        warnings: list[str] = []
        done = after_run(settings, batch, previous, warnings.append)
        assert warnings == [] and done is not None and done.sent == 1
        _wait(lambda: len(receiver.accepted) == 1, "the batch verdict's alert was not delivered", 60)
        (alert,) = receiver.accepted.values()
        assert (alert["type"], alert["source"], alert["subject"]) == (
            "pcc.fraud.clocking",
            "/pcc/batch",
            CLOCKED,
        )
        again = after_run(settings, batch, previous, warnings.append)  # the same version again
        assert again is not None and again.sent == 0 and receiver.attempts == 1 and receiver.forged == 0
    finally:
        feed.stop()
        dispatcher.stop()
        store.close()
        receiver.close()
