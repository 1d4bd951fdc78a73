"""The HTTP ingest bridge on the real broker and a real chain node, with a producer written in
JavaScript: Node 20's ``fetch`` and ``ethers`` (pinned in tests/js) sign each batch with the source's
registered key (tests/js/consumer.mjs, the same script a consumer signs queries with).

A batch sent three times is published once; every accepted event's checkpoint is the root the
AnchorRegistry holds; a broker outage is 503 and loses nothing that was acknowledged."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from kafka import KafkaConsumer

from infra.chain.node import NodeInfo
from infra.chain.npm import ensure_npm_packages
from infra.procs import free_ports
from ledger.client import LedgerClient
from ledger.config import LedgerConfig
from ledger.keys import dev_source_key
from ledger.onboarding import deploy_consortium, register_source
from pipelines.events import new_event_id
from pipelines.settings import LedgerSettings, Settings
from pipelines.vin import with_check_digit
from serving.auth import sign_request
from serving.ingest import IngestBridge, IngestConfig, as_lines, create_ingest_app, request_authenticator
from serving.ingest.wiring import bridge_from_settings, ledger_domain
from tests.fixtures.kafka import KafkaBroker

pytestmark = pytest.mark.integration

JS_DIR = Path(__file__).resolve().parents[1] / "js"


@pytest.fixture(scope="module")
def node() -> str:
    binary = shutil.which("node")
    assert binary is not None, "Node.js 20+ is needed (it also runs the anvil and solc npm packages)"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    assert int(version.strip().lstrip("v").split(".")[0]) >= 20, f"Node.js 20+ is needed, found {version}"
    ensure_npm_packages(JS_DIR)
    return binary


@pytest.fixture(scope="module")
def settings(kafka_broker: KafkaBroker, anvil_node: NodeInfo, tmp_path_factory) -> Settings:
    s = Settings(
        data_dir=tmp_path_factory.mktemp("ingest"),
        kafka=kafka_broker.settings.kafka,
        ledger=LedgerSettings(rpc_url=anvil_node.url, chain="anvil"),
    )
    deploy_consortium(s)
    return s


class Bridge:
    """``pcc ingest serve`` in a thread of this process, on a free port."""

    def __init__(self, settings: Settings) -> None:
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        config = IngestConfig.from_settings(settings).model_copy(
            update={"port": port, "publish_timeout_s": 12.0, "retry_after_s": 1}
        )
        self.ledger = LedgerClient.from_settings(settings)
        self.bridge: IngestBridge = bridge_from_settings(settings, config, self.ledger)
        self.auth = request_authenticator(config, ledger_domain(self.ledger, config.request_host))
        app = create_ingest_app(config, self.bridge, self.auth)
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> Bridge:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline, "the ingest bridge did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def post(self, source: str, key: str, body: bytes) -> httpx.Response:
        path = f"/v1/events/{source}"
        domain = self.auth.domain
        headers = sign_request(key, "POST", path, body, domain=domain)
        return httpx.post(self.url + path, content=body, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def bridge(settings: Settings) -> Iterator[Bridge]:
    with Bridge(settings) as b:
        yield b


@pytest.fixture
def source(settings: Settings, bridge: Bridge) -> tuple[str, str]:
    """A freshly registered garage and its key (dev chain: derived from the deployer's)."""
    source_id = f"garage-{uuid.uuid4().hex[:8]}"
    register_source(settings, source_id, "garage", 2, client=bridge.ledger)
    deployer = LedgerConfig.from_settings(settings).deployer_key.get_secret_value()
    return source_id, dev_source_key(deployer, source_id)


def readings(source_id: str, start: int, count: int) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + count):
        record: dict[str, Any] = {
            "event_type": "maintenance",
            "schema_version": 1,
            "source_id": source_id,
            "vin": with_check_digit(f"WVWZZZ1KZ{i % 9:08d}"),
            "event_time": f"2026-02-02T09:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
            "payload": {"odometer_km": 20_000 + i, "service_type": "oil_change", "in_network": True},
        }
        if i % 2 == 0:  # half carry their own id, half get one derived from their content
            record["event_id"] = new_event_id()
        out.append(record)
    return out


def consume(settings: Settings, source_id: str, expected: int, timeout_s: float = 60.0) -> list[dict]:
    """Every event of ``source_id`` on the garage topic (waits for ``expected`` distinct ids)."""
    consumer = KafkaConsumer(
        "pcc.garage",
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )
    seen: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=1000, max_records=5000)
            for messages in batch.values():
                for m in messages:
                    event = orjson.loads(m.value)
                    if event.get("source_id") == source_id:
                        seen.append(event)
            if len({e["event_id"] for e in seen}) >= expected and not batch:
                break
    finally:
        consumer.close()
    return seen


def _js(node: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [node, str(JS_DIR / "consumer.mjs"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=JS_DIR,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_a_batch_signed_in_javascript_sent_three_times_is_published_once(
    node: str, settings: Settings, bridge: Bridge, source: tuple[str, str]
) -> None:
    source_id, key = source
    body = as_lines(readings(source_id, 0, 12)).decode()
    path = f"/v1/events/{source_id}"
    answers = [_js(node, "request", bridge.url, key, "POST", path, body) for _ in range(3)]
    assert [a["status"] for a in answers] == [200, 200, 200], answers[0]["body"]
    first, *retries = (a["body"] for a in answers)
    assert first["accepted"] == 12 and first["refused"] == 0
    assert [(r["accepted"], r["duplicate"]) for r in retries] == [(0, 12), (0, 12)]
    ids = [line["event_id"] for line in first["lines"]]
    for retry in retries:
        assert [line["event_id"] for line in retry["lines"]] == ids
    # each line's checkpoint is what the chain anchored for this source
    for line in first["lines"]:
        checkpoint = line["checkpoint"]
        root = bridge.ledger.anchors.root_at(source_id, checkpoint["tree_size"])
        assert root is not None and root.hex() == checkpoint["root"] and line["published"]
    events = consume(settings, source_id, 12)
    assert sorted(e["event_id"] for e in events) == sorted(ids)  # each once
    assert {e["proof"]["root"] for e in events} == {first["lines"][0]["checkpoint"]["root"]}


def test_a_signature_by_another_key_is_refused_in_javascript_too(
    node: str, bridge: Bridge, source: tuple[str, str]
) -> None:
    source_id, _ = source
    body = as_lines(readings(source_id, 0, 1)).decode()
    out = _js(node, "request", bridge.url, "0x" + "5a" * 32, "POST", f"/v1/events/{source_id}", body)
    assert out["status"] == 403
    assert f"is not the registered key of source {source_id}" in out["body"]["message"]


def test_a_broker_outage_is_503_and_nothing_acknowledged_is_lost(
    settings: Settings, bridge: Bridge, source: tuple[str, str], kafka_broker: KafkaBroker
) -> None:
    source_id, key = source
    batch = readings(source_id, 100, 20)
    kafka_broker.stop()
    try:
        down = bridge.post(source_id, key, as_lines(batch))
        assert down.status_code == 503 and down.headers["Retry-After"] == "1"
        acknowledged = [line["event_id"] for line in down.json()["lines"] if line["status"] == "accepted"]
        assert len(acknowledged) == 20
        refused = bridge.post(source_id, key, as_lines(readings(source_id, 200, 5)))
        assert (
            refused.status_code == 503 and "nothing of this batch was accepted" in refused.json()["message"]
        )
    finally:
        kafka_broker.start()
    bridge.bridge.retry_now()  # what the retry loop does every Retry-After seconds
    events = consume(settings, source_id, 20)
    assert sorted({e["event_id"] for e in events}) == sorted(acknowledged)
    again = bridge.post(source_id, key, as_lines(batch)).json()
    assert again["duplicate"] == 20 and all(line["published"] for line in again["lines"])


def test_a_garage_cannot_publish_as_another_source_choose_a_topic_or_put_a_vin_on_kafka(
    settings: Settings, bridge: Bridge, source: tuple[str, str]
) -> None:
    """As an attacker through the bridge's publisher (librdkafka by default): lines claiming another
    member's source id or naming their own topic are refused, and what is published carries the
    sender's source, its topic and the vehicle's pseudonym as key, never the VIN."""
    source_id, key = source
    other = f"garage-{uuid.uuid4().hex[:8]}"
    register_source(settings, other, "garage", 2, client=bridge.ledger)
    assert settings.kafka.producer_client == "confluent-kafka"
    own = readings(source_id, 300, 2)
    as_other = dict(readings(source_id, 302, 1)[0], source_id=other)
    with_topic = dict(readings(source_id, 303, 1)[0], topic="pcc.telemetry")
    answer = bridge.post(source_id, key, as_lines([*own, as_other, with_topic])).json()
    statuses = [line["status"] for line in answer["lines"]]
    assert statuses == ["accepted", "accepted", "refused", "refused"], answer
    assert "$.source_id" in answer["lines"][2]["path"]
    consumer = KafkaConsumer(
        *("pcc.garage", "pcc.telemetry"), bootstrap_servers=settings.kafka.bootstrap, group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000,
    )  # fmt: skip
    mine: list[tuple[str, bytes, dict]] = []
    try:
        for message in consumer:
            event = orjson.loads(message.value)
            assert event.get("source_id") != other, "an event was published under another member's id"
            if event.get("source_id") == source_id:
                mine.append((message.topic, message.key, event))
    finally:
        consumer.close()
    vins = {r["vin"].encode() for r in [*own, as_other, with_topic]}
    assert sorted(e["event_id"] for _, _, e in mine) == sorted(line["event_id"] for line in answer["lines"][:2])
    for topic, message_key, event in mine:
        assert topic == "pcc.garage" and message_key == event["vehicle"].encode()
        assert message_key.startswith(b"v-") and not any(v in message_key or v in orjson.dumps(event) for v in vins)
