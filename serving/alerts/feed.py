"""The alerts topic read by the dispatcher: offsets are committed once the deliveries are recorded."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson

from pipelines.alerts import ensure_topic
from serving.alerts.config import AlertsConfig
from serving.alerts.dispatcher import Dispatcher


class AlertFeed:
    """A thread polling ``<prefix>alerts`` (consumer group ``pcc-alerts``) into the dispatcher."""

    def __init__(self, config: AlertsConfig, dispatcher: Dispatcher) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self.read = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: Exception | None = None

    def start(self) -> None:
        from kafka import KafkaConsumer

        ensure_topic(self.config.bootstrap, self.config.topic)
        self._consumer: Any = KafkaConsumer(
            bootstrap_servers=self.config.bootstrap,
            group_id=self.config.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a first start misses nothing already on the topic
            client_id="pcc-alerts",
            # a group joined before the topic's metadata reached this client is assigned nothing
            # until the next refresh: 5 s, not the default 5 min
            metadata_max_age_ms=5000,
        )
        # join the group once the topic (just created) is in this client's metadata: the first
        # assignment then holds its partition instead of nothing
        deadline = time.monotonic() + 30
        while not self._consumer.partitions_for_topic(self.config.topic) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._consumer.subscribe([self.config.topic])
        self._thread = threading.Thread(target=self._run, name="pcc-alerts-feed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                polled = self._consumer.poll(timeout_ms=100)
                if not polled:
                    continue
                for records in polled.values():
                    for record in records:
                        try:
                            alert = orjson.loads(record.value)
                            _ = (alert["data"]["vehicle"], alert["data"]["kind"], alert["id"])
                        except (orjson.JSONDecodeError, KeyError, TypeError):
                            continue  # not an alert: nothing to deliver
                        self.dispatcher.offer(alert, record.value)
                        self.read += 1
                self._consumer.commit()
        except Exception as exc:  # surfaced by stop() and the health endpoint
            self.error = exc
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
