"""The project's Kafka broker, for real: topics, a round trip, a crash mid-stream, its CLI."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaTimeoutError

from infra.kafka import TOPICS, Broker, BrokerStateError, describe_topics
from infra.kafka.topics import admin_client
from pipelines.cli.main import main as pcc_main
from tests.fixtures.kafka import KafkaBroker, free_ports, isolated_settings

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def broker_up(kafka_broker: KafkaBroker) -> KafkaBroker:
    """Each test starts with the broker answering (a crash test may have left it down)."""
    kafka_broker.start()
    return kafka_broker


def producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=5000,
        retry_backoff_ms=200,
        reconnect_backoff_max_ms=1000,
        delivery_timeout_ms=120_000,
        max_block_ms=60_000,
    )


def read_all(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[tuple[int, bytes | None, bytes]]:
    """Every record of ``topic`` from the beginning to the current end: (partition, key, value)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        records: list[tuple[int, bytes | None, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in parts):
            assert time.monotonic() < deadline, f"could not read {topic} to its end offsets {end}"
            for batch in consumer.poll(timeout_ms=500).values():
                records += [(r.partition, r.key, r.value) for r in batch]
        return records
    finally:
        consumer.close()


def create_topic(bootstrap: str, partitions: int) -> str:
    name = f"test.crash-{uuid.uuid4().hex[:8]}"
    with admin_client(bootstrap) as admin:
        admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1}}, wait_for_metadata=True
        )
    return name


def test_platform_topics_exist_with_their_partitions_and_retention(kafka_broker: KafkaBroker) -> None:
    k = kafka_broker.settings.kafka
    infos = {t.name: t for t in describe_topics(kafka_broker.settings)}
    assert {n: t.partitions for n, t in infos.items()} == {
        "pcc.telemetry": k.partitions,
        "pcc.garage": k.partitions,
        "pcc.insurer": k.partitions,
        "pcc.deadletter": 1,
    }
    with admin_client(kafka_broker.bootstrap) as admin:
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "pcc.garage")])
    assert configs["topic"]["pcc.garage"]["retention.ms"]["value"] == str(k.retention_ms)
    assert set(TOPICS.values()) == {"pcc.telemetry", "pcc.garage", "pcc.insurer"}
    assert TOPICS["connected_car"] == "pcc.telemetry" and TOPICS["inspection_centre"] == "pcc.garage"


def test_topics_are_not_created_by_accident(kafka_broker: KafkaBroker) -> None:
    """auto.create.topics.enable=false: a typo in a topic name fails instead of creating a topic."""
    p = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, max_block_ms=3000)
    try:
        with pytest.raises(KafkaTimeoutError, match="metadata"):
            p.send("pcc.telemetri", b"x").get(timeout=10)
    finally:
        p.close(timeout=5)
    names = [t.name for t in describe_topics(kafka_broker.settings, ["pcc.telemetri"])]
    assert names == []


def test_round_trip_keeps_values_and_keys_on_one_partition(kafka_broker: KafkaBroker) -> None:
    topic = TOPICS["connected_car"]
    run = uuid.uuid4().hex
    vehicles = [f"v-{i:032x}" for i in range(5)]
    sent = [(vehicles[i % 5].encode(), json.dumps({"run": run, "n": i}).encode()) for i in range(50)]
    p = producer(kafka_broker.bootstrap)
    try:
        metas = [p.send(topic, key=k, value=v).get(timeout=30) for k, v in sent]
    finally:
        p.close(timeout=10)
    assert all(m.topic == topic for m in metas)

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap,
        group_id=f"test-{run}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
    )
    got: list[tuple[int, bytes | None, bytes]] = []
    try:
        for r in consumer:
            if json.loads(r.value)["run"] == run:
                got.append((r.partition, r.key, r.value))
            if len(got) == len(sent):
                break
    finally:
        consumer.close()
    assert sorted((k, v) for _, k, v in got) == sorted(sent)
    partitions_of = {k: {p for p, kk, _ in got if kk == k} for k, _ in sent}
    assert all(len(ps) == 1 for ps in partitions_of.values()), partitions_of


def test_acknowledged_messages_survive_a_crash_exactly_once(kafka_broker: KafkaBroker) -> None:
    topic = create_topic(kafka_broker.bootstrap, partitions=2)
    total = 3000
    acked: list[int] = []
    failed: list[BaseException] = []
    lock = threading.Lock()
    p = producer(kafka_broker.bootstrap)

    def on_ack(n: int) -> None:
        with lock:
            acked.append(n)

    def send_all() -> None:
        for n in range(total):
            fut = p.send(topic, key=str(n % 7).encode(), value=str(n).encode())
            fut.add_callback(lambda _meta, n=n: on_ack(n))
            fut.add_errback(failed.append)
            time.sleep(0.001)

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    deadline = time.monotonic() + 60
    while len(acked) < 500:  # crash mid-stream, with acknowledged data behind and more coming
        assert time.monotonic() < deadline and sender.is_alive(), f"only {len(acked)} acks before the crash"
        time.sleep(0.01)
    crashed_pid = kafka_broker.broker.pid()
    kafka_broker.kill()
    acked_at_crash = len(acked)
    assert kafka_broker.broker.status().ready is False
    assert acked_at_crash < total, "the stream finished before the crash; nothing was in flight"

    restarted = kafka_broker.start()
    assert not restarted.already_running
    assert any(f"pid {crashed_pid}" in note and "stale PID" in note for note in restarted.notes)
    sender.join(timeout=120)
    p.flush(timeout=120)
    p.close(timeout=10)
    assert failed == []

    values = [int(v) for _, _, v in read_all(kafka_broker.bootstrap, topic)]
    duplicates = [n for n, c in Counter(values).items() if c > 1]
    assert duplicates == []
    assert set(acked) <= set(values)
    assert len(acked) == total  # every send was acknowledged in the end (retried across the crash)


def test_status_follows_the_broker_down_and_up(kafka_broker: KafkaBroker) -> None:
    up = kafka_broker.broker.status()
    assert up.running and up.port_open and up.ready
    kafka_broker.kill()
    down = kafka_broker.broker.status()
    assert (down.pid, down.port_open, down.ready) == (None, False, False)
    assert down.stale_pid == up.pid
    kafka_broker.start()
    again = kafka_broker.broker.status()
    assert again.ready and again.pid not in (None, up.pid) and again.stale_pid is None


def test_start_is_idempotent(kafka_broker: KafkaBroker) -> None:
    pid = kafka_broker.broker.pid()
    result = Broker(kafka_broker.settings).start()
    assert result.already_running and result.status.pid == pid
    assert result.notes == [f"the broker is already running (pid {pid}) at {kafka_broker.bootstrap}"]


def test_a_taken_port_is_named(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    # another home whose bootstrap port is the session broker's
    other = isolated_settings(tmp_path, bootstrap=kafka_broker.bootstrap, controller_port=free_ports(1)[0])
    port = kafka_broker.bootstrap.rsplit(":", 1)[1]
    with pytest.raises(BrokerStateError, match=f"port {port} on 127.0.0.1 \\(bootstrap port"):
        Broker(other).start()
    # a plain listening socket on the controller port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        other = isolated_settings(tmp_path, bootstrap=f"127.0.0.1:{free_ports(1)[0]}", controller_port=taken)
        with pytest.raises(BrokerStateError, match=f"port {taken} on 127.0.0.1 \\(controller port"):
            Broker(other).start()
    assert not (tmp_path / "kafka" / "broker.pid").exists()


def test_cli_status_shows_pid_address_and_offsets(
    kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = kafka_broker.settings
    for key, value in {
        "PCC__DATA_DIR": str(s.data_dir),
        "PCC__KAFKA__BOOTSTRAP": s.kafka.bootstrap,
        "PCC__KAFKA__CONTROLLER_PORT": str(s.kafka.controller_port),
        "PCC__KAFKA__LIBS_DIR": str(s.kafka.libs_dir),
    }.items():
        monkeypatch.setenv(key, value)
    p = producer(kafka_broker.bootstrap)
    try:
        p.send("pcc.deadletter", value=b"bad bytes").get(timeout=30)
    finally:
        p.close(timeout=10)
    end = describe_topics(s, ["pcc.deadletter"])[0].end_offsets[0]

    assert pcc_main(["kafka", "status"]) == 0
    out = capsys.readouterr().out
    assert f"pid {kafka_broker.broker.pid()}, {kafka_broker.bootstrap}" in out
    assert str(kafka_broker.broker.paths.server_log) in out.replace("\n", "")
    deadletter_row = next(line for line in out.splitlines() if "pcc.deadletter" in line)
    assert f"0:{end}" in deadletter_row and end >= 1
