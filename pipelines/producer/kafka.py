"""Publishing events to Kafka: idempotent, ``acks=all``, bounded retries.

Two clients with the same guarantees and the same partitioning (murmur2 of the
key, as the Java client): :class:`ConfluentPublisher` (librdkafka, the default:
the record batches are built and checksummed in C) and :class:`KafkaPublisher`
(kafka-python, pure Python). ``kafka.producer_client`` chooses; docs/kafka.md
has the measurement behind the default.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipelines.producer.protocols import OutgoingEvent, Publisher

if TYPE_CHECKING:
    from pipelines.settings import Settings

log = logging.getLogger(__name__)

LINGER_MS = 5
MAX_REQUEST_TIMEOUT_MS = 10_000
#: keys whose partition is remembered (a vehicle pseudonym: ~40 bytes each, ~10 MB at most)
PARTITION_MEMO_SIZE = 100_000


def keyed_partitioner() -> Any:
    """Kafka's default partitioner (murmur2 of the key, as the Java client), remembered per key.

    kafka-python computes murmur2 in pure Python on every send, a quarter of
    the SDK's publishing time.  A producer sends many events per vehicle, so
    the partition of a (topic, key, partition count) is computed once: the
    same partition the default gives, recomputed when the topic grows.
    """
    from kafka.partitioner import DefaultPartitioner

    class _Remembered(DefaultPartitioner):  # type: ignore[misc]
        def __init__(self) -> None:
            self._memo: dict[tuple[str, bytes, int], int] = {}

        def partition(self, topic: str, key: Any, serialized_key: Any, value: Any, serialized_value: Any,
                      cluster: Any) -> int:  # fmt: skip
            partitions = cluster.partitions_for_topic(topic)
            if serialized_key is None or not partitions:
                return int(super().partition(topic, key, serialized_key, value, serialized_value, cluster))
            slot = (topic, bytes(serialized_key), len(partitions))
            found = self._memo.get(slot)
            if found is None:
                found = int(super().partition(topic, key, serialized_key, value, serialized_value, cluster))
                if len(self._memo) >= PARTITION_MEMO_SIZE:
                    self._memo.clear()
                self._memo[slot] = found
            return found

    return _Remembered()


def _timeouts_ms(delivery_timeout_s: float) -> tuple[int, int]:
    """(delivery, request) timeouts in ms: a request may wait what is left of the delivery timeout
    after the linger, 10 s at most."""
    delivery_ms = max(int(delivery_timeout_s * 1000), LINGER_MS + 1)
    return delivery_ms, min(delivery_ms - LINGER_MS, MAX_REQUEST_TIMEOUT_MS)


def producer_config(bootstrap: str, client_id: str, delivery_timeout_s: float) -> dict[str, Any]:
    """kafka-python's settings for one delivery timeout: a batch is acknowledged or failed within it,
    a broker that does not answer included.

    kafka-python refuses a ``delivery_timeout_ms`` below ``linger_ms + request_timeout_ms``, so a
    request may wait at most what is left of the delivery timeout after the linger (10 s at most).
    """
    delivery_ms, request_ms = _timeouts_ms(delivery_timeout_s)
    return {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "delivery_timeout_ms": delivery_ms,
        "max_in_flight_requests_per_connection": 5,
        "linger_ms": LINGER_MS,
        "batch_size": 256 * 1024,
        "request_timeout_ms": request_ms,
        "max_block_ms": delivery_ms,
        "bootstrap_timeout_ms": delivery_ms,  # no broker answers: the batch fails within the timeout too
        "partitioner": keyed_partitioner(),
    }


class KafkaPublisher:
    """A Kafka producer tuned for no loss: every send is acknowledged by the broker or reported.

    The connection is made on the first :meth:`publish`, so a producer can
    start (and keep logging events) while the broker is down; events the
    broker does not acknowledge within ``delivery_timeout_s`` come back as
    failed and stay in the producer's log.
    """

    def __init__(self, bootstrap: str, *, delivery_timeout_s: float = 30.0, client_id: str = "pcc-producer"):
        try:
            import kafka  # noqa: F401
        except ImportError as exc:  # pragma: no cover - extra missing
            raise ImportError("Kafka support needs the extra: pip install 'pcc[kafka]'") from exc
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._timeout = delivery_timeout_s
        self._producer: Any = None

    def _connect(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            self._producer = KafkaProducer(**producer_config(self._bootstrap, self._client_id, self._timeout))
        return self._producer

    def publish(self, events: Sequence[OutgoingEvent]) -> list[tuple[OutgoingEvent, Exception]]:
        try:
            producer = self._connect()
        except Exception as exc:  # the broker did not answer within the timeout
            return [
                (e, ConnectionError(f"no Kafka broker reachable at {self._bootstrap}: {exc}")) for e in events
            ]
        futures = []
        failed: list[tuple[OutgoingEvent, Exception]] = []
        for event in events:
            try:
                futures.append((event, producer.send(event.topic, key=event.key, value=event.value)))
            except Exception as exc:  # buffer full or metadata unavailable for max_block_ms
                failed.append((event, exc))
        producer.flush(timeout=self._timeout)
        for event, future in futures:
            try:
                future.get(timeout=self._timeout)
            except Exception as exc:
                failed.append((event, exc))
        return failed

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=self._timeout)
            self._producer = None


def confluent_config(bootstrap: str, client_id: str, delivery_timeout_s: float) -> dict[str, Any]:
    """librdkafka's settings for the same guarantees as :func:`producer_config`.

    ``partitioner: murmur2_random`` is what keeps a vehicle on the partition the
    Java client and kafka-python give its key (librdkafka's own default hashes
    with CRC-32, which would split one vehicle's events between partitions
    when producers use different clients).
    """
    delivery_ms, request_ms = _timeouts_ms(delivery_timeout_s)
    return {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,
        "max.in.flight.requests.per.connection": 5,
        "linger.ms": LINGER_MS,
        "batch.size": 256 * 1024,
        "message.timeout.ms": delivery_ms,
        "request.timeout.ms": request_ms,
        "partitioner": "murmur2_random",
        "compression.type": "none",
    }


class ConfluentPublisher:
    """:class:`KafkaPublisher`'s contract on librdkafka (``confluent-kafka``).

    Every event handed to :meth:`publish` is acknowledged by the broker, or
    comes back as failed with the client's reason, within ``delivery_timeout_s``
    (plus a second for the last delivery reports): a broker that never answers
    included.
    """

    def __init__(self, bootstrap: str, *, delivery_timeout_s: float = 30.0, client_id: str = "pcc-producer"):
        try:
            import confluent_kafka  # noqa: F401
        except ImportError as exc:  # pragma: no cover - extra missing
            raise ImportError("Kafka support needs the extra: pip install 'pcc[kafka]'") from exc
        self._bootstrap = bootstrap
        self._config = confluent_config(bootstrap, client_id, delivery_timeout_s)
        self._timeout = delivery_timeout_s
        self._producer: Any = None

    def _connect(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer(self._config, logger=log)
        return self._producer

    def publish(self, events: Sequence[OutgoingEvent]) -> list[tuple[OutgoingEvent, Exception]]:
        producer = self._connect()
        failed: list[tuple[OutgoingEvent, Exception]] = []
        unreported = set(range(len(events)))

        def report(index: int, err: Any) -> None:
            unreported.discard(index)
            if err is not None:
                failed.append((events[index], _delivery_error(err, self._bootstrap)))

        for index, event in enumerate(events):
            while True:
                try:
                    producer.produce(
                        event.topic, event.value, event.key,
                        on_delivery=lambda err, _msg, i=index: report(i, err),
                    )  # fmt: skip
                    break
                except BufferError:  # the client's queue is full: let deliveries drain it
                    producer.poll(0.05)
                except Exception as exc:  # e.g. a topic name the client refuses
                    unreported.discard(index)
                    failed.append((event, exc))
                    break
        producer.flush(self._timeout + 1.0)
        for index in sorted(unreported):  # no delivery report in time: not acknowledged
            failed.append((events[index], TimeoutError(f"no acknowledgement from {self._bootstrap} in time")))
        return failed

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._timeout)
            self._producer = None


def _delivery_error(err: Any, bootstrap: str) -> Exception:
    """A delivery report's error as an exception; one naming the broker when none acknowledged in time."""
    from confluent_kafka import KafkaError

    unreachable = {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
                   KafkaError._ALL_BROKERS_DOWN}  # fmt: skip
    if err.code() in unreachable:
        return ConnectionError(f"no Kafka broker at {bootstrap} acknowledged the event in time: {err.str()}")
    return RuntimeError(f"Kafka did not take the event: {err.name()}: {err.str()}")


def publisher_for(
    settings: Settings, *, delivery_timeout_s: float = 30.0, client_id: str = "pcc-producer"
) -> Publisher:
    """The publisher of ``settings.kafka.producer_client`` for the broker of ``settings.kafka``."""
    kind = ConfluentPublisher if settings.kafka.producer_client == "confluent-kafka" else KafkaPublisher
    return kind(settings.kafka.bootstrap, delivery_timeout_s=delivery_timeout_s, client_id=client_id)
