"""A producer's durable transparency log: what it appended, anchored and published.

One directory per source::

    leaves.bin   every leaf hash, 32 bytes each, append-only (index = position)
    spool.jsonl  the envelopes (without proof) logged but not yet acknowledged by Kafka
    state.json   the compact range up to which everything is published, and the
                 checkpoints anchored beyond it

The three steps of a batch are recorded in this order, each durable before the
next starts: *append* (leaf hashes and envelopes on disk), *anchor* (the
checkpoint's transaction on the ledger, then ``state.json``), *publish* (Kafka
acknowledges every event, then ``state.json`` moves the published range and
the spool is cut).  A crash between any two steps is recovered on the next
open by redoing the later steps from disk: the same events under the same
indexes, proven against the same anchored root.  Nothing is re-anchored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipelines.errors import PccStateError, PccValueError
from pipelines.events.envelope import Envelope
from pipelines.files import atomic_write, process_alive
from pipelines.merkle import (
    HASH_SIZE,
    Checkpoint,
    CompactRange,
    LeafHashFile,
    MerkleLog,
    append_leaf_hashes,
    verify_consistency,
)


@dataclass(frozen=True, slots=True)
class AnchoredCheckpoint:
    tree_size: int
    root: bytes
    tx_hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"tree_size": self.tree_size, "root": self.root.hex(), "tx_hash": self.tx_hash}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnchoredCheckpoint:
        return cls(int(data["tree_size"]), bytes.fromhex(data["root"]), str(data.get("tx_hash", "")))


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    index: int
    envelope: Envelope  # as the log spooled it (the producer validated it before)


class ProducerLog:
    """The on-disk log of one source.  Not thread-safe: one producer process per source."""

    def __init__(self, directory: str | os.PathLike[str], source_id: str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.source_id = source_id
        self._leaves_path = self.dir / "leaves.bin"
        self._spool_path = self.dir / "spool.jsonl"
        self._state_path = self.dir / "state.json"
        self._lock_path = self.dir / "producer.lock"
        self._take_lock()
        state = self._read_state()
        self.published = CompactRange.from_dict(state["published"])
        self.anchored = [AnchoredCheckpoint.from_dict(c) for c in state.get("anchored", [])]
        self.last_anchor: AnchoredCheckpoint | None = (
            AnchoredCheckpoint.from_dict(state["last_anchor"]) if state.get("last_anchor") else None
        )
        self.gas_used = int(state.get("gas_used", 0))
        self.checkpoints_anchored = int(state.get("checkpoints_anchored", 0))
        self._size = self._recover_leaves()
        self._spool = self._read_spool()
        if len(self._spool) != self._size - self.published.size:
            raise PccStateError(
                f"producer log {self.dir}: the spool holds {len(self._spool)} events but "
                f"{self._size - self.published.size} leaves are unpublished; the directory was edited by hand"
            )
        self._spool_fh = open(self._spool_path, "ab")  # noqa: SIM115 - closed in close()
        self._leaf_buffer: list[bytes] = []

    # ------------------------------------------------------------------ state

    def _take_lock(self) -> None:
        try:
            fd = os.open(self._lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = self._lock_path.read_text().strip() or "?"
            if pid.isdigit() and not process_alive(int(pid)):
                self._lock_path.unlink(missing_ok=True)
                return self._take_lock()
            raise PccStateError(
                f"the log of source {self.source_id} in {self.dir} is in use by process {pid}"
            ) from None
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)

    def _read_state(self) -> dict[str, Any]:
        if not self._state_path.exists():
            return {"source_id": self.source_id, "published": CompactRange().to_dict(), "anchored": []}
        try:
            state: dict[str, Any] = json.loads(self._state_path.read_text())
        except ValueError as exc:
            raise PccStateError(f"producer log state {self._state_path} is not valid JSON: {exc}") from None
        if state.get("source_id") != self.source_id:
            raise PccValueError(
                f"producer log {self.dir} belongs to source {state.get('source_id')!r}, not {self.source_id!r}"
            )
        return state

    def _save_state(self) -> None:
        state = {
            "source_id": self.source_id,
            "published": self.published.to_dict(),
            "anchored": [c.to_dict() for c in self.anchored],
            "last_anchor": self.last_anchor.to_dict() if self.last_anchor else None,
            "gas_used": self.gas_used,
            "checkpoints_anchored": self.checkpoints_anchored,
        }
        atomic_write(self._state_path, json.dumps(state, indent=1).encode())

    def _recover_leaves(self) -> int:
        if not self._leaves_path.exists():
            return 0
        size, torn = divmod(self._leaves_path.stat().st_size, HASH_SIZE)
        if torn:  # a crash cut the last record: it was never spooled completely either
            with open(self._leaves_path, "r+b") as f:
                f.truncate(size * HASH_SIZE)
        return size

    def _read_spool(self) -> list[SpooledEvent]:
        if not self._spool_path.exists():
            return []
        events: list[SpooledEvent] = []
        good_bytes = 0
        with open(self._spool_path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn last line after a crash
                record = orjson.loads(line)
                events.append(SpooledEvent(int(record["i"]), record["e"]))
                good_bytes += len(line)
        # keep only what belongs to unpublished leaves, in order
        events = [e for e in events if e.index >= self.published.size]
        expected = range(self.published.size, self.published.size + len(events))
        if [e.index for e in events] != list(expected):
            raise PccStateError(f"producer log spool {self._spool_path} is out of order")
        if events and events[-1].index >= self._size_on_disk():
            # the leaf of the last spooled event never reached disk: drop it, it was never anchored
            events = [e for e in events if e.index < self._size_on_disk()]
        self._rewrite_spool(events)
        return events

    def _size_on_disk(self) -> int:
        return self._leaves_path.stat().st_size // HASH_SIZE if self._leaves_path.exists() else 0

    def _rewrite_spool(self, events: list[SpooledEvent]) -> None:
        data = b"".join(orjson.dumps({"i": e.index, "e": e.envelope}) + b"\n" for e in events)
        atomic_write(self._spool_path, data)

    # ------------------------------------------------------------------ API

    @property
    def size(self) -> int:
        """How many events the log holds (published or not)."""
        return self._size + len(self._leaf_buffer)

    @property
    def unpublished(self) -> int:
        return self.size - self.published.size

    def append(self, envelope: Envelope, leaf_hash: bytes) -> int:
        """Record one event; returns its log index.  Durable at the next :meth:`sync`."""
        index = self.size
        self._leaf_buffer.append(leaf_hash)
        self._spool_fh.write(orjson.dumps({"i": index, "e": envelope}) + b"\n")
        self._spool.append(SpooledEvent(index, envelope))
        return index

    def sync(self) -> None:
        """Make every appended event durable (leaf hashes after their spool lines)."""
        self._spool_fh.flush()
        os.fsync(self._spool_fh.fileno())
        if self._leaf_buffer:
            append_leaf_hashes(self._leaves_path, self._leaf_buffer, fsync=True)
            self._size += len(self._leaf_buffer)
            self._leaf_buffer = []

    def next_checkpoint(self) -> tuple[Checkpoint, list[SpooledEvent], list[bytes]] | None:
        """The checkpoint to publish next: an anchored one not yet published, or a new one.

        Returns the checkpoint (with every inclusion proof of its batch), the
        events it covers and their leaf hashes, or ``None`` when everything is
        published.
        """
        self.sync()
        if self.size == self.published.size:
            return None
        target = self.anchored[0].tree_size if self.anchored else self.size
        with LeafHashFile(self._leaves_path) as leaves:
            batch = leaves[self.published.size : target]
        log = MerkleLog(self.published, batch)
        checkpoint = log.checkpoint()
        if self.anchored and checkpoint.root != self.anchored[0].root:
            raise PccStateError(
                f"source {self.source_id}: the log no longer matches the root anchored at tree size "
                f"{target}; leaves.bin was altered"
            )
        previous = self.last_anchor
        if previous is not None and previous.tree_size == checkpoint.previous_size:
            if previous.root != checkpoint.previous_root:
                raise PccStateError(
                    f"source {self.source_id}: the published log does not match the root anchored at "
                    f"tree size {previous.tree_size}"
                )
            if previous.tree_size and not verify_consistency(
                previous.tree_size, checkpoint.tree_size, checkpoint.consistency_proof(),
                previous.root, checkpoint.root,
            ):  # fmt: skip
                raise PccStateError(
                    f"source {self.source_id}: new checkpoint is not an extension of the last"
                )
        events = self._spool[: target - self.published.size]
        return checkpoint, events, batch

    def record_anchor(self, checkpoint: Checkpoint, tx_hash: str, gas_used: int) -> None:
        """The checkpoint's transaction is on the ledger."""
        if self.anchored and self.anchored[0].tree_size == checkpoint.tree_size:
            return
        anchored = AnchoredCheckpoint(checkpoint.tree_size, checkpoint.root, tx_hash)
        self.anchored.append(anchored)
        self.last_anchor = anchored
        self.gas_used += gas_used
        self.checkpoints_anchored += 1
        self._save_state()

    def record_published(self, checkpoint: Checkpoint) -> None:
        """Kafka acknowledged every event of the checkpoint's batch."""
        done = checkpoint.tree_size - self.published.size
        self.published = _advance(self.published, self._leaves_path, checkpoint.tree_size)
        self.anchored = [c for c in self.anchored if c.tree_size > checkpoint.tree_size]
        self._spool = self._spool[done:]
        self._save_state()
        self._spool_fh.close()
        self._rewrite_spool(self._spool)
        self._spool_fh = open(self._spool_path, "ab")  # noqa: SIM115

    def pending_events(self) -> Iterator[SpooledEvent]:
        return iter(self._spool)

    def close(self) -> None:
        try:
            self.sync()
            self._spool_fh.close()
        finally:
            self._lock_path.unlink(missing_ok=True)

    def __enter__(self) -> ProducerLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _advance(published: CompactRange, leaves_path: Path, tree_size: int) -> CompactRange:
    with LeafHashFile(leaves_path) as leaves:
        batch = leaves[published.size : tree_size]
    rng = published.copy()
    rng.extend(batch)
    return rng

