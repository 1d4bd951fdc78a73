"""Kafka topic names, and which topic each kind of source writes to.

Defined once here so the producer SDK, the broker set-up in ``infra/kafka``
and the speed layer agree.  Names carry the configurable prefix
(``settings.kafka.topic_prefix``, default ``pcc.``).
"""

from __future__ import annotations

from typing import Final

SOURCE_KINDS: Final = ("connected_car", "garage", "inspection_centre", "insurer", "manual_entry")

#: source kind -> topic suffix
_TOPIC_OF_KIND: Final = {
    "connected_car": "telemetry",
    "garage": "garage",
    "inspection_centre": "garage",
    "manual_entry": "garage",
    "insurer": "insurer",
}

EVENT_TOPICS: Final = ("telemetry", "garage", "insurer")
DEADLETTER: Final = "deadletter"


def topic_for_kind(kind: str, prefix: str = "pcc.") -> str:
    """The topic a source of this kind publishes to."""
    try:
        return prefix + _TOPIC_OF_KIND[kind]
    except KeyError:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {', '.join(SOURCE_KINDS)}") from None


def event_topics(prefix: str = "pcc.") -> list[str]:
    """Every topic that carries producer events (what the speed layer reads)."""
    return [prefix + t for t in EVENT_TOPICS]


def deadletter_topic(prefix: str = "pcc.") -> str:
    return prefix + DEADLETTER
