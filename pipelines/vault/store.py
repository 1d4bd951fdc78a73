"""The vault's SQLite file, its secret and the caches an erasure empties: what every part of the vault uses."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cachetools import FIFOCache, LRUCache

from pipelines.errors import PccConfigError, PccNotFoundError
from pipelines.files import secret_file
from pipelines.sqlite import ThreadLocalSqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vehicles (
    id INTEGER PRIMARY KEY,
    vin TEXT NOT NULL UNIQUE,
    salt BLOB NOT NULL,
    pseudonym TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS owners (
    id INTEGER PRIMARY KEY,
    lookup BLOB NOT NULL UNIQUE,      -- HMAC(secret, normalised identity)
    identity TEXT NOT NULL,           -- normalised identity, JSON
    salt BLOB NOT NULL,
    pseudonym TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ownership (
    id INTEGER PRIMARY KEY,
    vehicle_id INTEGER NOT NULL REFERENCES vehicles(id) ON DELETE CASCADE,
    owner_id INTEGER NOT NULL REFERENCES owners(id) ON DELETE CASCADE,
    since_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ownership_vehicle ON ownership(vehicle_id, id);
CREATE INDEX IF NOT EXISTS ownership_owner ON ownership(owner_id);
CREATE TABLE IF NOT EXISTS data_keys (
    vehicle_id INTEGER NOT NULL REFERENCES vehicles(id) ON DELETE CASCADE,
    category TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    key BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (vehicle_id, category, epoch)
);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    action TEXT NOT NULL,
    subject TEXT,                     -- a pseudonym, never a VIN or a name
    actor TEXT,                       -- a caller role
    detail TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('erase_generation', 0);
"""


def load_or_create_key(path: Path) -> bytes:
    """The vault secret from ``path``, created (32 random bytes, hex, mode 0600) on first use."""
    try:
        text = secret_file(path, lambda: secrets.token_hex(32), "vault key")
    except PermissionError as exc:
        raise PccConfigError(str(exc)) from None
    if not re.fullmatch(r"[0-9a-f]{64,}", text):
        raise PccConfigError(f"vault key file {path} must hold at least 64 lower-case hex digits")
    return bytes.fromhex(text)


class VaultStore:
    """The vault file (WAL, a connection per thread, mode 0600) and the secret pseudonyms are keyed with."""

    def __init__(self, path: Path, secret: bytes) -> None:
        if len(secret) < 32:
            raise PccConfigError("vault secret: must be at least 32 bytes")
        self.path = path
        self._secret = secret
        self._db = ThreadLocalSqlite(
            self.path,
            pragmas=("journal_mode=WAL", "secure_delete=ON", "foreign_keys=ON", "synchronous=NORMAL"),
            on_connect=self._private,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.conn().executescript(_SCHEMA)

    def _private(self, _conn: sqlite3.Connection) -> None:
        with suppress(OSError):
            os.chmod(self.path, 0o600)

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (reads, autocommit)."""
        return self._db.conn()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, holding the write lock from its first statement."""
        with self._db.tx() as conn:
            yield conn

    def close(self) -> None:
        self._db.close()

    def mac(self, label: bytes, *parts: bytes) -> bytes:
        """HMAC-SHA256 under the vault secret of ``label`` and ``parts``, separated by NUL bytes."""
        return hmac.new(self._secret, label + b"\x00" + b"\x00".join(parts), hashlib.sha256).digest()

    def vehicle_id(self, conn: sqlite3.Connection, vehicle: str) -> int:
        """The row id of a vehicle pseudonym; :class:`PccNotFoundError` when the vault does not know it."""
        row = conn.execute("SELECT id FROM vehicles WHERE pseudonym = ?", (vehicle,)).fetchone()
        if row is None:
            raise PccNotFoundError(f"unknown vehicle pseudonym {vehicle}")
        return int(row[0])

    def erase_generation(self) -> int:
        """How many erasures the file has seen (any process): cached lookups older than a change are stale."""
        row = self.conn().execute("SELECT value FROM meta WHERE key = 'erase_generation'").fetchone()
        return int(row[0])

    def scrub(self) -> None:
        """Rewrite the file without free pages and empty the WAL, so deleted plaintext is gone from disk."""
        conn = self.conn()
        conn.execute("VACUUM")
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:  # a reader in another thread/process holds an old snapshot; try once more shortly
            time.sleep(0.2)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class ErasableCaches:
    """Pseudonyms and sealing keys kept in memory, dropped when any vault object or process erases.

    ``size`` 0 keeps nothing; another process's erasure is seen within ``check_s``
    seconds (the store's erase generation is read at most that often).
    cachetools caches are not thread-safe: every access holds :attr:`lock`.
    """

    def __init__(self, store: VaultStore, size: int, check_s: float) -> None:
        self._store = store
        self.enabled = size > 0
        self._check_s = check_s
        self.lock = threading.Lock()
        #: VIN -> pseudonym, least recently used dropped first
        self.pseudonyms: LRUCache[str, str] = LRUCache(maxsize=max(size, 1))
        #: (vehicle, category, epoch) -> data key, for sealing only
        self.keys: FIFOCache[tuple[str, str, int], bytes] = FIFOCache(maxsize=max(size, 1))
        self._generation = -1
        self._checked = 0.0

    def check(self) -> None:
        """Drop everything when another vault object (or process) erased something."""
        now = time.monotonic()
        if now - self._checked < self._check_s:
            return
        generation = self._store.erase_generation()
        with self.lock:
            self._checked = now
            if generation != self._generation:
                self.pseudonyms.clear()
                self.keys.clear()
                self._generation = generation

    def clear(self) -> None:
        """Drop everything now (this object erased); the next :meth:`check` reads the generation again."""
        with self.lock:
            self.pseudonyms.clear()
            self.keys.clear()
            self._checked = 0.0
