"""Errors of the local Kafka broker and its topics."""

from __future__ import annotations

from pipelines.errors import PccConfigError, PccStateError, PccTransientError


class BrokerStateError(PccStateError):
    """The broker cannot be started or stopped as asked (port taken, start-up failed, no mvn/java)."""


class KafkaUnavailableError(PccTransientError):
    """No Kafka broker answers at the bootstrap address (yet)."""


class KafkaConfigError(PccConfigError):
    """A Kafka setting cannot work (an external bootstrap for the local broker, a bad heap size)."""


class TopicMismatchError(PccStateError):
    """A topic exists with a layout other than the one the settings ask for."""
