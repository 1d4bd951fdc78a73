"""KafkaPublisher's client settings hold for every delivery timeout, short ones included."""

from __future__ import annotations

import socket

import pytest
from kafka.errors import KafkaConfigurationError
from kafka.producer.record_accumulator import RecordAccumulator

from pipelines.producer.kafka import KafkaPublisher, producer_config
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


def test_a_short_timeout_reports_the_missing_broker_not_a_configuration_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    publisher = KafkaPublisher(f"127.0.0.1:{port}", delivery_timeout_s=1)
    event = OutgoingEvent(topic="pcc.garage", key=b"k", value=b"{}", event_id="e-1", log_index=0)
    failed = publisher.publish([event])
    publisher.close()
    assert [e for e, _ in failed] == [event]
    reason = failed[0][1]
    assert not isinstance(reason, KafkaConfigurationError) and not isinstance(
        reason.__cause__, KafkaConfigurationError
    )
    assert "Must set delivery_timeout_ms" not in str(reason)
