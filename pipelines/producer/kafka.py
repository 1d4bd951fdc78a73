"""Publishing events to Kafka with kafka-python: idempotent, ``acks=all``, bounded retries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipelines.errors import PccTransientError
from pipelines.producer.protocols import OutgoingEvent


class KafkaPublisher:
    """A Kafka producer tuned for no loss: every send is acknowledged by the broker or reported."""

    def __init__(self, bootstrap: str, *, delivery_timeout_s: float = 30.0, client_id: str = "pcc-producer"):
        try:
            from kafka import KafkaProducer
            from kafka.errors import NoBrokersAvailable
        except ImportError as exc:  # pragma: no cover - extra missing
            raise ImportError("Kafka support needs the extra: pip install 'pcc[kafka]'") from exc
        self._timeout = delivery_timeout_s
        try:
            self._producer: Any = KafkaProducer(
                bootstrap_servers=bootstrap,
                client_id=client_id,
                acks="all",
                enable_idempotence=True,
                delivery_timeout_ms=int(delivery_timeout_s * 1000),
                max_in_flight_requests_per_connection=5,
                linger_ms=5,
                batch_size=256 * 1024,
                compression_type=None,
                request_timeout_ms=int(min(delivery_timeout_s, 10) * 1000),
                max_block_ms=int(delivery_timeout_s * 1000),
            )
        except NoBrokersAvailable:
            raise PccTransientError(f"no Kafka broker reachable at {bootstrap}") from None

    def publish(self, events: Sequence[OutgoingEvent]) -> list[tuple[OutgoingEvent, Exception]]:
        futures = []
        failed: list[tuple[OutgoingEvent, Exception]] = []
        for event in events:
            try:
                futures.append((event, self._producer.send(event.topic, key=event.key, value=event.value)))
            except Exception as exc:  # buffer full or broker unreachable for max_block_ms
                failed.append((event, exc))
        self._producer.flush(timeout=self._timeout)
        for event, future in futures:
            try:
                future.get(timeout=self._timeout)
            except Exception as exc:
                failed.append((event, exc))
        return failed

    def close(self) -> None:
        self._producer.close(timeout=self._timeout)
