"""A real three-node Kafka cluster (KRaft, loopback): replicated topics, a node killed mid-produce.

One cluster for the module, three JVMs with small heaps (256 MB each), on free
ports.  The fault test kills a node with SIGKILL while the platform's own
producer (``acks=all``, idempotent) keeps sending, restarts it, and reads every
topic back: each event id is there exactly once, and the in-sync replica sets
shrank to two nodes and came back to three.  The second kills a node while the
speed layer reads the cluster: every event reaches its sinks exactly once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from infra.kafka.cluster import Cluster, NodeAddress
from infra.kafka.errors import KafkaUnavailableError
from infra.kafka.topics import PartitionInfo, admin_client, describe_partitions, ensure_topics
from pipelines.cli.main import main as pcc_main
from pipelines.producer.kafka import ConfluentPublisher, KafkaPublisher
from pipelines.producer.protocols import OutgoingEvent
from speed.config import SpeedConfig
from speed.pipeline import SpeedRun
from speed.roots import InMemoryRoots
from tests.fixtures.kafka import free_ports, isolated_settings
from tests.fixtures.synthetic import FixedRoots, SyntheticSource, vehicle, wire

pytestmark = pytest.mark.integration

EVENT_TOPICS = ("pcc.telemetry", "pcc.garage", "pcc.insurer")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    settings = isolated_settings(tmp_path_factory.mktemp("kafka-cluster"), heap="256m")
    ports = free_ports(6)
    nodes = tuple(NodeAddress(i + 1, ports[2 * i], ports[2 * i + 1]) for i in range(3))
    c = Cluster.create(settings, 3, nodes)
    try:
        c.start(wait=True, timeout=240.0)
        ensure_topics(c.client_settings)
    except Exception as exc:
        c.stop(timeout=10)
        logs = "\n".join(b.log_tail(10) for b in c.nodes.values())
        pytest.fail(f"the test Kafka cluster could not start: {exc}\n{logs}", pytrace=False)
    try:
        yield c
    finally:
        c.stop(timeout=30)


def partitions(c: Cluster) -> list[PartitionInfo]:
    return describe_partitions(c.client_settings)


def wait_for(what: str, check: object, timeout_s: float = 60.0) -> None:
    """Poll ``check()`` until true; the deadline only guards against a hang. While a node is down the
    controller moves and a describe can find no broker to answer for a moment: that is "not yet"."""
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except KafkaUnavailableError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_topics_are_on_three_nodes_and_need_two_for_a_write(cluster: Cluster) -> None:
    infos = partitions(cluster)
    assert {i.topic for i in infos} == {*EVENT_TOPICS, "pcc.deadletter"}
    assert all(i.replicas == (1, 2, 3) and i.isr == (1, 2, 3) for i in infos), infos
    assert {i.leader for i in infos} == {1, 2, 3}  # leadership is spread over the nodes
    with admin_client(cluster.bootstrap) as admin:
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in EVENT_TOPICS]
        configs = admin.describe_configs(resources)["topic"]
    assert all(configs[t]["min.insync.replicas"]["value"] == "2" for t in EVENT_TOPICS)


@pytest.mark.parametrize("kind", [ConfluentPublisher, KafkaPublisher], ids=["confluent-kafka", "kafka-python"])
def test_a_node_killed_mid_produce_loses_and_duplicates_nothing(cluster: Cluster, kind: type) -> None:
    run = uuid.uuid4().hex[:8]
    publisher = kind(cluster.bootstrap, delivery_timeout_s=60.0, client_id=f"pcc-chaos-{run}")
    sent: list[str] = []
    failed: list[tuple[str, str]] = []
    sent_during_outage = 0
    killed = threading.Event()
    restarted = threading.Event()

    def batch(n: int) -> list[OutgoingEvent]:
        out = []
        for i in range(n):
            event_id = f"{run}-{len(sent) + i:06d}"
            vehicle = f"veh-{(len(sent) + i) % 50:03d}"
            out.append(
                OutgoingEvent(
                    topic=EVENT_TOPICS[(len(sent) + i) % 3],
                    key=vehicle.encode(),
                    value=json.dumps({"event_id": event_id, "run": run}).encode(),
                    event_id=event_id,
                    log_index=len(sent) + i,
                )
            )
        return out

    def produce_until(stop: threading.Event) -> None:
        nonlocal sent_during_outage
        while not stop.is_set():
            events = batch(100)
            failed.extend((e.event_id, repr(exc)) for e, exc in publisher.publish(events))
            sent.extend(e.event_id for e in events)
            if killed.is_set() and not restarted.is_set():
                sent_during_outage += len(events)
            time.sleep(0.02)

    stop = threading.Event()
    producing = threading.Thread(target=produce_until, args=(stop,), name="chaos-producer")
    producing.start()
    try:
        wait_for("the first acknowledged events", lambda: len(sent) >= 500)
        # the node leading most partitions now (an earlier kill may have moved leadership off a node)
        victim = Counter(i.leader for i in partitions(cluster)).most_common(1)[0][0]
        assert victim is not None, "no partition has a leader: the kill would test nothing"
        live = tuple(n for n in (1, 2, 3) if n != victim)
        cluster.kill(victim)
        killed.set()
        wait_for(
            "every ISR to shrink to the two live nodes",
            lambda: all(i.isr == live and i.leader in live for i in partitions(cluster)),
        )
        outage_mark = len(sent)
        wait_for("produce to go on while a node is down", lambda: len(sent) >= outage_mark + 500)
        cluster.start_node(victim)
        restarted.set()
        wait_for(
            "every ISR to be back to three nodes",
            lambda: all(i.isr == (1, 2, 3) for i in partitions(cluster)),
            timeout_s=90.0,
        )
        mark = len(sent)
        wait_for("produce after the restart", lambda: len(sent) >= mark + 300)
    finally:
        stop.set()
        producing.join(timeout=120)
        publisher.close()
        if killed.is_set() and not restarted.is_set():  # a failure above leaves the next test three nodes
            cluster.start_node(victim)

    assert not failed, failed[:5]
    assert sent_during_outage >= 500
    ids = Counter(read_ids(cluster.bootstrap, run))
    assert sum(ids.values()) == len(sent)
    assert set(ids) == set(sent)  # none lost
    assert [i for i, n in ids.items() if n > 1] == []  # none duplicated


def test_cli_status_shows_each_partitions_leader_and_isr(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = cluster.settings
    for key, value in {
        "PCC__DATA_DIR": str(s.data_dir),
        "PCC__KAFKA__HOME": str(cluster.home),
        "PCC__KAFKA__LIBS_DIR": str(s.kafka.libs_dir),
    }.items():
        monkeypatch.setenv(key, value)
    assert pcc_main(["kafka", "up"]) == 0  # the home's cluster.json: the same three nodes, already up
    assert "Kafka cluster of 3 brokers already running" in capsys.readouterr().out
    assert pcc_main(["kafka", "status"]) == 0
    out = capsys.readouterr().out
    for node, _ in cluster.status():
        assert node.bootstrap in out
    rows = [line for line in out.splitlines() if "pcc.telemetry" in line and "1,2,3" in line]
    assert len(rows) == cluster.settings.kafka.partitions  # one row per partition: replicas 1,2,3
    assert all(line.count("1,2,3") == 2 for line in rows)  # ... and all three in sync
    assert pcc_main(["kafka", "up", "--brokers", "1"]) != 0  # a cluster's home is no single broker's


def read_ids(bootstrap: str, run: str, timeout_s: float = 60.0) -> list[str]:
    """The event ids of this run in every event topic, from the beginning to the end offsets."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [
            TopicPartition(t, p) for t in EVENT_TOPICS for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        ids: list[str] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in parts):
            assert time.monotonic() < deadline, f"could not read to the end offsets {end}"
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    value = json.loads(r.value)
                    if value.get("run") == run:
                        ids.append(value["event_id"])
        return ids
    finally:
        consumer.close()



def _event_ids(directory: Path) -> Counter[str]:
    files = sorted(directory.rglob("*.parquet"))
    return Counter(eid for f in files for eid in pq.read_table(f, columns=["event_id"])["event_id"].to_pylist())


def test_a_node_killed_while_the_speed_layer_reads_loses_and_repeats_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The speed layer reads the cluster; the node leading most of its partitions is killed mid-consume
    while the rest of the events are produced, then started again: every event is in the real-time view
    and the master dataset exactly once, none dead-lettered."""
    settings = isolated_settings(tmp_path, bootstrap=cluster.bootstrap, controller_port=0, topic_prefix="kill.")
    ensure_topics(settings)
    roots = InMemoryRoots()
    source = SyntheticSource("cc-aurora", roots, checkpoint_every=500)
    start = int(time.time() * 1000) - 30 * 86_400_000
    events = [
        source.append(source.odometer(vehicle(i % 300), 1_000 + (i // 300) * 40, start + i * 60_000))
        for i in range(6_000)
    ]
    source.checkpoint()
    topic = "kill.telemetry"
    publisher = KafkaPublisher(cluster.bootstrap, delivery_timeout_s=90.0, client_id="pcc-chaos-consume")

    def publish(part: list[dict[str, Any]]) -> None:
        outgoing = [OutgoingEvent(topic, e["vehicle"].encode(), wire(e), e["event_id"], i) for i, e in enumerate(part)]
        failed = publisher.publish(outgoing)
        assert not failed, failed[:3]

    config = SpeedConfig.from_settings(
        settings, metrics_port=None, max_events=len(events), master_flush_rows=1_000, master_flush_interval_s=1.0
    )
    # earlier tests killed nodes: the group coordinator's partitions may still be moving back
    wait_for(
        "the cluster to be whole again",
        lambda: all(i.isr == (1, 2, 3) for i in describe_partitions(settings, [topic, "__consumer_offsets"])),
        timeout_s=120.0,
    )
    publish(events[:3_000])
    run = SpeedRun(config, FixedRoots(roots))
    errors: list[BaseException] = []

    def speed() -> None:
        try:
            run.run()
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    reading = threading.Thread(target=speed, name="speed-on-cluster")
    reading.start()
    try:
        wait_for(
            "the speed layer to show rows",
            lambda: len(list(config.realtime_dir.glob("*.parquet"))) >= 2 or bool(errors),
            timeout_s=180.0,
        )
        assert not errors, errors
        victim = Counter(i.leader for i in describe_partitions(settings, [topic])).most_common(1)[0][0]
        assert victim is not None
        cluster.kill(victim)
        publish(events[3_000:])  # produced while the node is down
        cluster.start_node(victim)
        reading.join(timeout=300)
        assert not reading.is_alive(), "the speed layer did not read every event"
    finally:
        publisher.close()
        if reading.is_alive():  # a failure above must not leave it reading for the rest of the session
            run.stop()
            reading.join(timeout=60)
    assert not errors, errors
    want = Counter(e["event_id"] for e in events)
    assert _event_ids(config.realtime_dir) == want
    assert _event_ids(config.master_dir) == want
    consumer = KafkaConsumer(bootstrap_servers=cluster.bootstrap, consumer_timeout_ms=3_000)
    dead = TopicPartition(config.deadletter_topic, 0)
    consumer.assign([dead])
    consumer.seek_to_beginning(dead)
    assert list(consumer) == []
    consumer.close()
