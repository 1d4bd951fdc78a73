"""The speed layer's alerts: every flag raised, every wreck and sale accepted, to the ``alerts`` topic.

Published as soon as a polled batch is processed (the alert service pushes
them to subscribers' webhooks, :mod:`serving.alerts`), and flushed before the
sinks commit their offsets: an event whose rows are durable has its alerts on
the topic.  After a crash the same events are processed again and raise the
same alerts (same id, :func:`pipelines.alerts.alert_id`): at least once, and
the alert service delivers each id once per subscription.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from pipelines.alerts import ALERTS, AlertSigner, alerts_of, ensure_topic, raiser_key_path
from pipelines.topics import DEADLETTER
from speed.config import SpeedConfig
from speed.errors import LedgerUnavailable


def alerts_topic_of(config: SpeedConfig) -> str:
    """``<prefix>alerts``, beside the speed layer's dead-letter topic (same prefix)."""
    prefix = config.deadletter_topic.removesuffix(DEADLETTER)
    return prefix + ALERTS


class AlertPublisher:
    """Publishes the alerts of processed rows, signed, to the alerts topic, keyed by vehicle pseudonym."""

    def __init__(self, bootstrap: str, topic: str, signer: AlertSigner) -> None:
        from kafka import KafkaProducer

        ensure_topic(bootstrap, topic)
        self.topic = topic
        self.signer = signer
        self.published = 0
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=2, client_id="pcc-speed-alerts"
        )

    @classmethod
    def for_config(cls, config: SpeedConfig) -> AlertPublisher:
        signer = (
            AlertSigner.for_settings(config.settings)
            if config.settings is not None
            else AlertSigner.from_file(raiser_key_path(config.data_dir))
        )
        return cls(config.bootstrap, alerts_topic_of(config), signer)

    def publish(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Send the alerts the rows raise (not waiting for the broker); returns how many."""
        sent = 0
        for alert in alerts_of(rows):
            self._producer.send(
                self.topic, key=alert["subject"].encode(), value=orjson.dumps(self.signer.sign(alert))
            )
            sent += 1
        self.published += sent
        return sent

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until the broker holds every alert sent; a broker that does not answer is transient."""
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise LedgerUnavailable(f"alerts topic {self.topic}: {type(exc).__name__}") from None

    def close(self) -> None:
        self._producer.close(timeout=10)
