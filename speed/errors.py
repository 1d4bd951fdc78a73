"""Errors of the speed layer.

A :class:`RejectedEvent` is terminal: the event goes to the dead-letter topic
with its machine-readable ``reason`` (the ``pcc-reason`` header).  A
:class:`LedgerUnavailable` is transient: the event waits and is retried, it is
never dead-lettered for that reason alone.
"""

from __future__ import annotations

from typing import Final

from pipelines.errors import PccError, PccStateError, PccTransientError, PccValueError

#: Machine codes of the ``pcc-reason`` dead-letter header.
REASONS: Final = (
    "unparseable",  # not strict JSON / too big / not an object
    "bad_schema",  # the envelope or its payload breaks the schema
    "future_timestamp",  # event_time or ingestion_time too far ahead
    "bad_hash",  # the proof's leaf is not the hash of the envelope (tampered payload)
    "bad_proof",  # the inclusion proof does not lead to the anchored checkpoint root
    "unknown_source",  # source_id not in the SourceRegistry
    "duplicate_event",  # an event id already accepted from another Kafka record (replay)
    "unknown_vehicle",  # protected fields of a vehicle the identity vault has no keys for (erased)
    "retired_version",  # a version 1 event (protected fields in clear) ingested after speed.v1_cutover
)


class SpeedError(PccError):
    """Root of the speed layer's errors."""


class RejectedEvent(SpeedError, PccValueError):
    """An event that can never be accepted; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class LedgerUnavailable(SpeedError, PccTransientError):
    """The ledger (checkpoints, source registry) cannot be read right now."""


class SinkStateError(SpeedError, PccStateError):
    """The sink directory is in a state the speed layer cannot continue from."""


class DiskFull(SpeedError, PccStateError):
    """A sink's disk is full: the run stops (nothing past the durable offsets is acknowledged)."""
