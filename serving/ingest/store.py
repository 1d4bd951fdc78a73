"""What the bridge accepted, by event id: how a retried batch is answered without sending twice.

One SQLite file (``<data_dir>/ingest/accepted.sqlite``, WAL)::

    accepted     event_id → source, log index, SHA-256 of the line as accepted
    checkpoints  source, tree size → root and transaction, as anchored

An event id is written here in the same step that makes its event durable in
the source's producer log, before its batch is anchored and published; at
start the bridge adds what the logs hold and this file lacks (a crash between
the two), so an event id in a log is always known here.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class AcceptedEvent:
    event_id: str
    source_id: str
    log_index: int
    digest: bytes  # SHA-256 of the producer input as accepted (event id included)


@dataclass(frozen=True, slots=True)
class AnchoredRoot:
    tree_size: int
    root: str  # hex
    tx_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {"tree_size": self.tree_size, "root": self.root, "tx_hash": self.tx_hash}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS accepted (
    event_id TEXT PRIMARY KEY,
    source_id TEXT NOT NULL,
    log_index INTEGER NOT NULL,
    digest BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    source_id TEXT NOT NULL,
    tree_size INTEGER NOT NULL,
    root TEXT NOT NULL,
    tx_hash TEXT NOT NULL,
    PRIMARY KEY (source_id, tree_size)
) WITHOUT ROWID;
"""


class AcceptedEvents:
    """The bridge's memory of accepted event ids and anchored checkpoints (thread-safe)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def find(self, event_ids: Iterable[str]) -> dict[str, AcceptedEvent]:
        ids = list(dict.fromkeys(event_ids))
        found: dict[str, AcceptedEvent] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = self._db.execute(
                    "SELECT event_id, source_id, log_index, digest FROM accepted WHERE event_id IN "
                    f"({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                for row in rows:
                    found[row[0]] = AcceptedEvent(row[0], row[1], int(row[2]), bytes(row[3]))
        return found

    def add(self, events: Iterable[AcceptedEvent]) -> None:
        """Record accepted events in one transaction (an id already known is left as it is)."""
        rows = [(e.event_id, e.source_id, e.log_index, e.digest) for e in events]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR IGNORE INTO accepted VALUES (?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def record_checkpoint(self, source_id: str, checkpoint: AnchoredRoot) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO checkpoints VALUES (?, ?, ?, ?)",
                (source_id, checkpoint.tree_size, checkpoint.root, checkpoint.tx_hash),
            )

    def checkpoint_of(self, source_id: str, log_index: int) -> AnchoredRoot | None:
        """The first anchored checkpoint that covers ``log_index`` (None: not anchored yet)."""
        with self._lock:
            row = self._db.execute(
                "SELECT tree_size, root, tx_hash FROM checkpoints WHERE source_id = ? AND tree_size > ? "
                "ORDER BY tree_size LIMIT 1",
                (source_id, log_index),
            ).fetchone()
        return AnchoredRoot(int(row[0]), row[1], row[2]) if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
