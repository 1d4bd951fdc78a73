"""The two boundaries of a producer: where checkpoints are anchored, where events go.

Real implementations: the ledger's AnchorRegistry (``ledger``, registered under
the ``pcc.anchors`` entry-point group) and Kafka
(:class:`pipelines.producer.kafka.KafkaPublisher`).  In-memory ones live
beside them for tests and dry runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class AnchorReceipt:
    """What anchoring one checkpoint cost and where it landed."""

    tree_size: int
    root: bytes
    tx_hash: str = ""
    block: int = 0
    gas_used: int = 0


class Anchor(Protocol):
    """Anchors a source's checkpoints (tree size, RFC 6962 root)."""

    def anchor(self, source_id: str, tree_size: int, root: bytes) -> AnchorReceipt: ...

    def latest_checkpoint(self, source_id: str) -> tuple[int, bytes] | None: ...


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """One event ready for the wire."""

    topic: str
    key: bytes
    value: bytes
    event_id: str
    log_index: int


class Publisher(Protocol):
    """Sends events and says which ones the broker acknowledged."""

    def publish(self, events: Sequence[OutgoingEvent]) -> list[tuple[OutgoingEvent, Exception]]:
        """Send all, wait for acknowledgements; return the ones that failed with why."""
        ...

    def close(self) -> None: ...


@dataclass
class MemoryAnchor:
    """Checkpoints kept in a dict: for unit tests and dry runs (``--dry-run``)."""

    checkpoints: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)

    def anchor(self, source_id: str, tree_size: int, root: bytes) -> AnchorReceipt:
        history = self.checkpoints.setdefault(source_id, [])
        if history and tree_size <= history[-1][0]:
            from pipelines.errors import PccValueError

            raise PccValueError(
                f"checkpoint for {source_id} must grow the tree: {tree_size} <= {history[-1][0]}"
            )
        history.append((tree_size, root))
        return AnchorReceipt(tree_size=tree_size, root=root)

    def latest_checkpoint(self, source_id: str) -> tuple[int, bytes] | None:
        history = self.checkpoints.get(source_id)
        return history[-1] if history else None

    def root_at(self, source_id: str, tree_size: int) -> bytes | None:
        for size, root in self.checkpoints.get(source_id, []):
            if size == tree_size:
                return root
        return None


@dataclass
class MemoryPublisher:
    """Keeps what it was given: for unit tests."""

    sent: list[OutgoingEvent] = field(default_factory=list)
    fail_with: Exception | None = None

    def publish(self, events: Sequence[OutgoingEvent]) -> list[tuple[OutgoingEvent, Exception]]:
        if self.fail_with is not None:
            return [(e, self.fail_with) for e in events]
        self.sent.extend(events)
        return []

    def close(self) -> None:
        return None
