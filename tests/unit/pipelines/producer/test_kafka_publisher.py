"""Both publishers' client settings hold for every delivery timeout, short ones included, and a missing
broker is reported as such by either."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.errors import KafkaConfigurationError
from kafka.producer.record_accumulator import RecordAccumulator

from pipelines.producer.kafka import ConfluentPublisher, KafkaPublisher, confluent_config, producer_config
from pipelines.producer.protocols import OutgoingEvent


@pytest.mark.parametrize("timeout_s", [0.001, 0.5, 3, 9.99, 10, 10.005, 30, 120])
def test_kafka_python_accepts_the_settings_of_any_delivery_timeout(timeout_s: float):
    config = producer_config("127.0.0.1:9092", "pcc-producer", timeout_s)
    RecordAccumulator(**{k: v for k, v in config.items() if k in RecordAccumulator.DEFAULT_CONFIG})
    assert config["request_timeout_ms"] + config["linger_ms"] <= config["delivery_timeout_ms"]
    assert config["request_timeout_ms"] <= 10_000
    assert config["bootstrap_timeout_ms"] == config["max_block_ms"] == config["delivery_timeout_ms"]
    if timeout_s >= 1:
        assert config["delivery_timeout_ms"] == int(timeout_s * 1000)


@pytest.mark.parametrize("timeout_s", [0.001, 0.5, 3, 9.99, 10, 10.005, 30, 120])
def test_librdkafka_accepts_the_settings_of_any_delivery_timeout(timeout_s: float):
    from confluent_kafka import Producer

    config = confluent_config("127.0.0.1:9092", "pcc-producer", timeout_s)
    Producer(config)  # librdkafka checks its configuration here (no connection yet)
    assert config["request.timeout.ms"] <= min(config["message.timeout.ms"], 10_000)
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    assert config["partitioner"] == "murmur2_random"  # the Java client's partition for a key
    if timeout_s >= 1:
        assert config["message.timeout.ms"] == int(timeout_s * 1000)


@pytest.mark.parametrize("kind", [KafkaPublisher, ConfluentPublisher])
def test_a_short_timeout_reports_the_missing_broker_not_a_configuration_error(kind):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    publisher = kind(f"127.0.0.1:{port}", delivery_timeout_s=1)
    events = [
        OutgoingEvent(topic="pcc.garage", key=b"k", value=b"{}", event_id=f"e-{i}", log_index=i) for i in range(3)
    ]
    failed = publisher.publish(events)
    publisher.close()
    assert sorted(e.event_id for e, _ in failed) == ["e-0", "e-1", "e-2"]
    reason = failed[0][1]
    assert isinstance(reason, ConnectionError) and f"127.0.0.1:{port}" in str(reason)
    assert not isinstance(reason.__cause__, KafkaConfigurationError)
    assert "Must set delivery_timeout_ms" not in str(reason)


class _Cluster:
    """The part of kafka-python's ClusterMetadata a partitioner reads."""

    def __init__(self, partitions: int) -> None:
        self.count = partitions

    def topics(self) -> set[str]:
        return {"pcc.telemetry"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.count))

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.count))


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.binary(min_size=1, max_size=48), min_size=1, max_size=20),
    counts=st.lists(st.integers(1, 64), min_size=1, max_size=4),
)
def test_each_key_goes_to_the_partition_kafkas_default_partitioner_gives_also_after_the_topic_grows(
    keys: list[bytes], counts: list[int]
) -> None:
    from kafka.partitioner import DefaultPartitioner

    remembered, reference = producer_config("127.0.0.1:9092", "p", 30)["partitioner"], DefaultPartitioner()
    for count in counts:  # the same partitioner object while the topic's partition count changes
        cluster = _Cluster(count)
        for key in keys + keys:  # asked twice: computed, then remembered
            got = remembered.partition("pcc.telemetry", key, key, b"v", b"v", cluster)
            assert got == reference.partition("pcc.telemetry", key, key, b"v", b"v", cluster)
