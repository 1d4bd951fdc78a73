"""The producer SDK end to end on the real broker and a real chain node.

Produce → consume round trip with proofs checked against the roots anchored on
chain; a broker crash mid-stream loses nothing; a broker outage longer than
the delivery timeout is reported and the next run sends everything; a
restarted producer continues its log consistently with what it anchored.
Each with both Kafka clients a producer can choose (``kafka.producer_client``),
and both put every vehicle on the partition the Java client gives its key.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
from kafka import KafkaConsumer

from infra.chain.node import NodeInfo
from ledger.client import LedgerClient
from ledger.onboarding import deploy_consortium, register_source
from pipelines.canonical import leaf_hash
from pipelines.errors import PccTransientError
from pipelines.merkle import LeafHashFile, consistency_proof, verify_consistency, verify_inclusion
from pipelines.producer import Producer, load_anchor
from pipelines.producer.kafka import ConfluentPublisher, KafkaPublisher, publisher_for
from pipelines.producer.protocols import OutgoingEvent
from pipelines.settings import Settings
from pipelines.vault import IdentityVault
from pipelines.vin import with_check_digit
from tests.fixtures.kafka import KafkaBroker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(kafka_broker: KafkaBroker, anvil_node: NodeInfo, tmp_path_factory) -> Settings:
    base = kafka_broker.settings
    s = Settings(
        data_dir=tmp_path_factory.mktemp("producer"),
        kafka=base.kafka,
        ledger={"rpc_url": anvil_node.url, "chain": "anvil"},
        producer={"checkpoint_every": 128, "checkpoint_seconds": 3600},
    )
    deploy_consortium(s)
    return s


@pytest.fixture(scope="module")
def ledger(settings: Settings) -> LedgerClient:
    return LedgerClient.from_settings(settings)


@pytest.fixture
def source(settings: Settings, ledger: LedgerClient) -> str:
    """A freshly registered connected-car operator, so each test reads only its own events."""
    source_id = f"cc-test-{uuid.uuid4().hex[:8]}"
    register_source(settings, source_id, "connected_car", 1, client=ledger)
    return source_id


@pytest.fixture(params=["confluent-kafka", "kafka-python"])
def client(request) -> str:
    """The Kafka client the producer publishes with (``kafka.producer_client``)."""
    return str(request.param)


@pytest.fixture
def vault(settings: Settings) -> Iterator[IdentityVault]:
    v = IdentityVault(settings)
    yield v
    v.close()


def records(source_id: str, start: int, count: int) -> Iterator[dict]:
    for i in range(start, start + count):
        yield {
            "event_type": "odometer_reading",
            "schema_version": 1,
            "source_id": source_id,
            "vin": with_check_digit(f"WVWZZZ1KZ{i % 50:08d}"),
            "event_time": f"2026-02-{1 + i // 10000 % 28:02d}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
            "payload": {"odometer_km": 10_000 + i},
        }


def producer(settings, source_id, vault, client: str, delivery_timeout_s: float = 60.0) -> Producer:
    chosen = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"producer_client": client})})
    return Producer(
        settings,
        source_id=source_id,
        source_kind="connected_car",
        anchor=load_anchor(settings),
        publisher=publisher_for(chosen, delivery_timeout_s=delivery_timeout_s),
        vault=vault,
    )


def consume(settings: Settings, source_id: str, expected: int, timeout_s: float = 60.0) -> list[dict]:
    """Every event of ``source_id`` on the telemetry topic (waits for ``expected`` of them)."""
    consumer = KafkaConsumer(
        "pcc.telemetry",
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
                for m in messages:  # other tests also write here, garbage included
                    try:
                        event = orjson.loads(m.value)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(event, dict) and event.get("source_id") == source_id:
                        seen.append(event)
            if len({e["event_id"] for e in seen}) >= expected and not batch:
                break
    finally:
        consumer.close()
    return seen


def test_round_trip_every_event_proves_against_the_chain(settings, ledger, source, vault, client):
    with producer(settings, source, vault, client) as p:
        for raw in records(source, 0, 300):
            p.submit(raw)
    assert p.report.published == 300 and p.report.checkpoints == 3 and p.report.gas_used > 0
    events = consume(settings, source, 300)
    assert len(events) == 300
    for event in events:
        proof = event["proof"]
        root = ledger.anchors.root_at(source, proof["tree_size"])
        assert root is not None, f"tree size {proof['tree_size']} of {source} is not anchored"
        path = [bytes.fromhex(h) for h in proof["path"]]
        assert verify_inclusion(leaf_hash(event), proof["log_index"], proof["tree_size"], path, root)
    assert sorted(e["proof"]["log_index"] for e in events) == list(range(300))


def test_a_broker_crash_mid_stream_loses_nothing(settings, source, vault, client, kafka_broker: KafkaBroker):
    crashed = threading.Event()

    def crash_and_restart() -> None:
        kafka_broker.kill()
        crashed.set()
        time.sleep(2)
        kafka_broker.start()

    with producer(settings, source, vault, client, delivery_timeout_s=120) as p:
        for i, raw in enumerate(records(source, 0, 1200)):
            if i == 400:
                threading.Thread(target=crash_and_restart, daemon=True).start()
                crashed.wait(30)
            p.submit(raw)
    assert crashed.is_set()
    events = consume(settings, source, 1200, timeout_s=120)
    ids = {e["event_id"] for e in events}
    assert len(ids) == 1200
    by_id = {}
    for e in events:  # a batch re-sent after the crash carries the very same event
        assert by_id.setdefault(e["event_id"], e) == e


def test_an_outage_longer_than_the_timeout_is_reported_and_the_next_run_sends_all(
    settings, source, vault, client, kafka_broker: KafkaBroker
):
    kafka_broker.stop()
    try:
        p = producer(settings, source, vault, client, delivery_timeout_s=3)
        with pytest.raises(PccTransientError, match="kept in the log"):
            for raw in records(source, 0, 128):
                p.submit(raw)
        assert p.report.unsent == 128
        p.log.close()
    finally:
        kafka_broker.start()
    with producer(settings, source, vault, client) as again:
        pass
    assert again.report.published == 128 and again.report.checkpoints == 0  # anchored once, before the outage
    assert len({e["event_id"] for e in consume(settings, source, 128)}) == 128


def test_a_restarted_producer_extends_what_it_anchored(settings, ledger, source, vault, client):
    with producer(settings, source, vault, client) as p:
        for raw in records(source, 0, 200):
            p.submit(raw)
    first = ledger.anchors.latest(source)
    with producer(settings, source, vault, client) as p:
        for raw in records(source, 200, 200):
            p.submit(raw)
    second = ledger.anchors.latest(source)
    assert first is not None and second is not None and second[0] == 400 > first[0]
    sizes = [first[0], second[0]]
    with LeafHashFile(settings.path("producers", source, "leaves.bin")) as leaves:
        for size1, size2 in itertools.pairwise(sizes):
            proof = consistency_proof(leaves, size1, size2)
            root1 = ledger.anchors.root_at(source, size1)
            root2 = ledger.anchors.root_at(source, size2)
            assert root1 is not None and root2 is not None
            assert verify_consistency(size1, size2, proof, root1, root2)


def test_both_clients_put_each_vehicle_on_the_partition_the_java_client_gives_its_key(settings):
    """A vehicle's events stay on one partition whichever client its producers use (the speed layer
    keeps per-vehicle order and state per partition): librdkafka's own default would hash with CRC-32."""
    from kafka.partitioner import murmur2

    rng = random.Random(20261205)
    run = uuid.uuid4().hex[:8]
    keys = [rng.randbytes(rng.randint(1, 48)) for _ in range(150)] + [
        f"v{rng.getrandbits(160):040x}".encode() for _ in range(150)
    ]
    for kind in (ConfluentPublisher, KafkaPublisher):
        publisher = kind(settings.kafka.bootstrap, client_id=f"pcc-partition-{run}")
        events = [
            OutgoingEvent("pcc.telemetry", key, f"partition-check {run} {kind.__name__} {i}".encode(), f"{run}-{i}", i)
            for i, key in enumerate(keys)
        ]
        assert publisher.publish(events) == []
        publisher.close()
    consumer = KafkaConsumer(
        "pcc.telemetry", bootstrap_servers=settings.kafka.bootstrap, group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000,
    )  # fmt: skip
    landed: dict[tuple[str, bytes], int] = {}
    partitions = len(consumer.partitions_for_topic("pcc.telemetry") or ())
    try:
        for message in consumer:
            words = message.value.split(b" ")
            if len(words) == 4 and words[0] == b"partition-check" and words[1] == run.encode():
                landed[(words[2].decode(), message.key)] = message.partition
    finally:
        consumer.close()
    expected = {key: (murmur2(key) & 0x7FFFFFFF) % partitions for key in keys}  # the Java client's rule
    for kind in ("ConfluentPublisher", "KafkaPublisher"):
        assert {key: landed[(kind, key)] for key in keys} == expected, kind
    assert partitions > 1 and len(set(expected.values())) == partitions  # the keys spread: this can fail
