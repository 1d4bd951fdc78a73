"""The local broker's configuration: rendered properties, refused settings, topic layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.kafka import KafkaConfigError, topic_specs
from infra.kafka.broker import Broker, new_cluster_id
from infra.kafka.config import BrokerPaths, render_properties
from infra.kafka.errors import BrokerStateError
from infra.kafka.jars import ensure_jars
from pipelines.settings import Settings


def settings(tmp_path: Path, **kafka: object) -> Settings:
    return Settings(data_dir=tmp_path, kafka=kafka)


def properties(s: Settings) -> dict[str, str]:
    text = render_properties(s, BrokerPaths.of(s))
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def test_properties_follow_the_settings(tmp_path: Path) -> None:
    p = properties(settings(tmp_path, bootstrap="127.0.0.1:39092", controller_port=39093, retention_ms=5000))
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:39092,CONTROLLER://127.0.0.1:39093"
    assert p["advertised.listeners"] == "PLAINTEXT://127.0.0.1:39092"
    assert p["controller.quorum.voters"] == "1@127.0.0.1:39093"
    assert p["log.dirs"] == str((tmp_path / "kafka" / "data").absolute())
    assert p["log.retention.ms"] == "5000"
    assert p["auto.create.topics.enable"] == "false"
    assert p["min.insync.replicas"] == "1"
    assert p["group.initial.rebalance.delay.ms"] == "0"


def test_home_and_jar_cache_can_be_moved(tmp_path: Path) -> None:
    paths = BrokerPaths.of(settings(tmp_path, home=tmp_path / "h", libs_dir=tmp_path / "jars"))
    assert paths.data == tmp_path / "h" / "data"
    assert paths.libs == tmp_path / "jars"


@pytest.mark.parametrize(
    ("kafka", "named"),
    [
        ({"bootstrap": "kafka.example:9092"}, "external cluster"),
        ({"bootstrap": "127.0.0.1:9092,127.0.0.1:9094"}, "external cluster"),
        ({"bootstrap": "127.0.0.1"}, "must be host:port"),
        ({"bootstrap": "127.0.0.1:9092", "controller_port": 9092}, "must differ"),
        ({"heap": "lots"}, "kafka.heap"),
        ({"heap": "64m"}, "at least 128m"),
    ],
)
def test_settings_the_local_broker_cannot_use_are_refused(tmp_path: Path, kafka: dict, named: str) -> None:
    with pytest.raises(KafkaConfigError, match=named):
        Broker(settings(tmp_path, **kafka)).start(wait=False)
    assert not (tmp_path / "kafka").exists()


def test_topic_layout(tmp_path: Path) -> None:
    specs = {s.name: s for s in topic_specs(settings(tmp_path, partitions=6, retention_ms=1000))}
    assert {n: s.partitions for n, s in specs.items()} == {
        "pcc.telemetry": 6,
        "pcc.garage": 6,
        "pcc.insurer": 6,
        "pcc.deadletter": 1,
    }
    assert all(s.configs["retention.ms"] == "1000" for s in specs.values())
    prefixed = [s.name for s in topic_specs(settings(tmp_path, topic_prefix="test."))]
    assert prefixed == ["test.telemetry", "test.garage", "test.insurer", "test.deadletter"]


def test_missing_maven_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn anywhere
    with pytest.raises(BrokerStateError, match=r"Maven \(mvn\) is needed"):
        ensure_jars(tmp_path / "libs")
    assert not (tmp_path / "libs").exists()


def test_cluster_ids_are_kafka_uuids() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") and "=" not in i for i in ids)


def test_a_cluster_node_knows_its_quorum_and_replication(tmp_path: Path) -> None:
    from infra.kafka.cluster import Cluster

    s = settings(tmp_path, bootstrap="127.0.0.1:39092", controller_port=39093)
    cluster = Cluster.create(s, 3)
    assert cluster.bootstrap == "127.0.0.1:39092,127.0.0.1:39094,127.0.0.1:39096"
    node = cluster.node(2)
    p = {
        k: v
        for k, v in (
            line.split("=", 1)
            for line in render_properties(node.settings, node.paths, node.node).splitlines()
            if line and not line.startswith("#")
        )
    }
    assert p["node.id"] == "2"
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:39094,CONTROLLER://127.0.0.1:39095"
    assert p["controller.quorum.voters"] == "1@127.0.0.1:39093,2@127.0.0.1:39095,3@127.0.0.1:39097"
    assert p["default.replication.factor"] == p["offsets.topic.replication.factor"] == "3"
    assert p["min.insync.replicas"] == p["transaction.state.log.min.isr"] == "2"
    assert p["log.dirs"] == str((tmp_path / "kafka" / "node-2" / "data").absolute())
    assert len({b.node.cluster_id for b in cluster.nodes.values()}) == 1


def test_replicated_topics_need_two_in_sync_replicas(tmp_path: Path) -> None:
    from infra.kafka.topics import replication_for

    assert [replication_for(n) for n in (1, 2, 3, 5)] == [1, 2, 3, 3]
    specs = topic_specs(settings(tmp_path), replication_for(3))
    assert all(s.replication == 3 and s.configs["min.insync.replicas"] == "2" for s in specs)
    assert all(s.configs["min.insync.replicas"] == "1" for s in topic_specs(settings(tmp_path)))


def test_cluster_ports_that_collide_are_refused(tmp_path: Path) -> None:
    from infra.kafka.cluster import Cluster

    with pytest.raises(KafkaConfigError, match="collide"):
        Cluster.create(settings(tmp_path, bootstrap="127.0.0.1:39092", controller_port=39094), 3)


def test_a_cluster_can_be_created_with_the_bootstrap_its_clients_use(tmp_path: Path) -> None:
    from infra.kafka.cluster import Cluster

    listed = "127.0.0.1:39092,127.0.0.1:39094,127.0.0.1:39096"
    cluster = Cluster.create(settings(tmp_path, bootstrap=listed, controller_port=39093), 3)
    assert cluster.bootstrap == listed


def test_the_kafka_client_checksums_records_natively() -> None:
    """kafka-python computes each record batch's CRC-32C in pure Python unless the ``crc32c`` extension is
    installed: that was over half of the producers' CPU in the demo and a sixth of the speed layer's."""
    from kafka.record import _crc32c, util

    assert util._crc32c is not _crc32c.crc, "install the kafka extra (crc32c): record checksums run in Python"
    assert util.calc_crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
