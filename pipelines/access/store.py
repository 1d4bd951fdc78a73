"""Grant records and where they are kept.

A :class:`GrantStore` keeps the current grants and the current key epoch of
every (vehicle, category); revoking a grant deletes it *and* starts the next
epoch in one step, like ``AccessRegistry.revoke`` on the ledger.  Two
implementations live here: :class:`InMemoryGrantStore` (tests, one process)
and :class:`SqliteGrantStore` (a platform without a ledger).  The on-chain
one, on the ledger's AccessRegistry, belongs to ``ledger/`` (``ledger.grants``)
and is found through the entry point group ``pcc.grant_stores``:
:func:`open_grant_store` is what the layers call.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipelines.errors import PccConfigError, PccNotFoundError, PccValueError
from pipelines.settings import Settings
from pipelines.sqlite import ThreadLocalSqlite

from .wrap import fingerprint


@dataclass(frozen=True, slots=True)
class Grant:
    """The right of ``grantee`` (X25519 public key) to read ``category`` of ``vehicle``.

    ``epoch`` is the key epoch current when the grant was made: the grantee may
    read data sealed in that epoch and later ones, until ``expiry_s`` (Unix
    seconds) or revocation.  ``grantor`` is ``owner:<o-pseudonym>`` or
    ``producer:<source_id>``; ``signature`` its Ed25519 signature over
    :func:`pipelines.access.grants.grant_message`.
    """

    grantee: bytes
    vehicle: str
    category: str
    expiry_s: int
    epoch: int
    grantor: str
    signature: bytes

    @property
    def grantee_fingerprint(self) -> str:
        return fingerprint(self.grantee)

    def to_dict(self) -> dict[str, Any]:
        return {
            "grantee": self.grantee.hex(),
            "vehicle": self.vehicle,
            "category": self.category,
            "expiry_s": self.expiry_s,
            "epoch": self.epoch,
            "grantor": self.grantor,
            "signature": self.signature.hex(),
        }


class GrantStore(Protocol):
    """Current grants and key epochs.  Also an ``ErasableStore`` (``name``, ``erase_vehicle``)."""

    name: str

    def epoch(self, vehicle: str, category: str) -> int: ...

    def bump(self, vehicle: str, category: str) -> int: ...

    def bump_many(self, vehicle: str, categories: Sequence[str]) -> dict[str, int]:
        """Start the next epoch of each category of one vehicle at once; returns the new epochs."""
        ...

    def put(self, grant: Grant) -> Grant:
        """Record (or replace) a grant made at the current epoch; returns it as stored.

        A grant made at another epoch is refused (:class:`PccValueError`): its signature
        covers the epoch, and a revocation may have started a new one since it was checked.
        """
        ...

    def get(self, vehicle: str, category: str, grantee: bytes) -> Grant | None: ...

    def revoke(self, vehicle: str, category: str, grantee: bytes) -> int:
        """Delete the grant and start the next epoch; returns it. No such grant: PccNotFoundError."""
        ...

    def grants(self, *, vehicle: str | None = None, grantee: bytes | None = None) -> list[Grant]: ...

    def erase_vehicle(self, vehicle: str) -> int:
        """Forget a vehicle's grants (GDPR erasure), and its epochs where the backend can (the chain's
        counters stay); returns how many grants went."""
        ...


def _made_at(grant: Grant, epoch: int) -> Grant:
    """``grant`` if it was made at ``epoch``, the current one; else :class:`PccValueError`."""
    if grant.epoch != epoch:
        raise PccValueError(
            f"the grant of {grant.category} of {grant.vehicle} was signed at key epoch {grant.epoch}, "
            f"the current epoch is {epoch}: the grantor signs it again"
        )
    return grant


def _no_grant(vehicle: str, category: str, grantee: bytes) -> PccNotFoundError:
    return PccNotFoundError(f"no grant of {category} of {vehicle} to consumer key {fingerprint(grantee)}")


class InMemoryGrantStore:
    """A :class:`GrantStore` in a dict, for tests and single-process use."""

    name = "grants (memory)"

    def __init__(self) -> None:
        self._grants: dict[tuple[str, str, bytes], Grant] = {}
        self._epochs: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def epoch(self, vehicle: str, category: str) -> int:
        return self._epochs.get((vehicle, category), 0)

    def bump(self, vehicle: str, category: str) -> int:
        with self._lock:
            epoch = self._epochs[(vehicle, category)] = self._epochs.get((vehicle, category), 0) + 1
        return epoch

    def bump_many(self, vehicle: str, categories: Sequence[str]) -> dict[str, int]:
        return {category: self.bump(vehicle, category) for category in categories}

    def put(self, grant: Grant) -> Grant:
        with self._lock:
            stored = _made_at(grant, self._epochs.get((grant.vehicle, grant.category), 0))
            self._grants[(grant.vehicle, grant.category, grant.grantee)] = stored
        return stored

    def get(self, vehicle: str, category: str, grantee: bytes) -> Grant | None:
        return self._grants.get((vehicle, category, grantee))

    def revoke(self, vehicle: str, category: str, grantee: bytes) -> int:
        with self._lock:
            if self._grants.pop((vehicle, category, grantee), None) is None:
                raise _no_grant(vehicle, category, grantee)
            epoch = self._epochs[(vehicle, category)] = self._epochs.get((vehicle, category), 0) + 1
        return epoch

    def grants(self, *, vehicle: str | None = None, grantee: bytes | None = None) -> list[Grant]:
        return [
            g for g in self._grants.values() if vehicle in (None, g.vehicle) and grantee in (None, g.grantee)
        ]

    def erase_vehicle(self, vehicle: str) -> int:
        with self._lock:
            gone = [k for k in self._grants if k[0] == vehicle]
            for k in gone:
                del self._grants[k]
            for pair in [pair for pair in self._epochs if pair[0] == vehicle]:
                del self._epochs[pair]
        return len(gone)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
    vehicle TEXT NOT NULL,
    category TEXT NOT NULL,
    grantee BLOB NOT NULL,
    expiry_s INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    grantor TEXT NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (vehicle, category, grantee)
);
CREATE INDEX IF NOT EXISTS grants_grantee ON grants(grantee);
CREATE TABLE IF NOT EXISTS epochs (
    vehicle TEXT NOT NULL,
    category TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    PRIMARY KEY (vehicle, category)
);
"""

_COLUMNS = "grantee, vehicle, category, expiry_s, epoch, grantor, signature"


class SqliteGrantStore:
    """A :class:`GrantStore` in one SQLite file (WAL, one connection per thread)."""

    name = "grants (sqlite)"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = ThreadLocalSqlite(self.path, pragmas=("journal_mode=WAL", "secure_delete=ON"))
        self._conn = self._db.conn
        self._tx = self._db.tx
        self._conn().executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqliteGrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _epoch(conn: sqlite3.Connection, vehicle: str, category: str) -> int:
        row = conn.execute(
            "SELECT epoch FROM epochs WHERE vehicle = ? AND category = ?", (vehicle, category)
        ).fetchone()
        return 0 if row is None else int(row[0])

    @classmethod
    def _bump(cls, conn: sqlite3.Connection, vehicle: str, category: str) -> int:
        epoch = cls._epoch(conn, vehicle, category) + 1
        conn.execute(
            "INSERT INTO epochs(vehicle, category, epoch) VALUES (?, ?, ?) "
            "ON CONFLICT(vehicle, category) DO UPDATE SET epoch = excluded.epoch",
            (vehicle, category, epoch),
        )
        return epoch

    def epoch(self, vehicle: str, category: str) -> int:
        return self._epoch(self._conn(), vehicle, category)

    def bump(self, vehicle: str, category: str) -> int:
        with self._tx() as tx:
            return self._bump(tx, vehicle, category)

    def bump_many(self, vehicle: str, categories: Sequence[str]) -> dict[str, int]:
        with self._tx() as tx:
            return {category: self._bump(tx, vehicle, category) for category in categories}

    def put(self, grant: Grant) -> Grant:
        with self._tx() as tx:
            stored = _made_at(grant, self._epoch(tx, grant.vehicle, grant.category))
            tx.execute(
                f"INSERT OR REPLACE INTO grants({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.grantee,
                    stored.vehicle,
                    stored.category,
                    stored.expiry_s,
                    stored.epoch,
                    stored.grantor,
                    stored.signature,
                ),
            )
        return stored

    @staticmethod
    def _grant(row: tuple[Any, ...]) -> Grant:
        return Grant(
            bytes(row[0]), str(row[1]), str(row[2]), int(row[3]), int(row[4]), str(row[5]), bytes(row[6])
        )

    def get(self, vehicle: str, category: str, grantee: bytes) -> Grant | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {_COLUMNS} FROM grants WHERE vehicle = ? AND category = ? AND grantee = ?",
                (vehicle, category, grantee),
            )
            .fetchone()
        )
        return None if row is None else self._grant(row)

    def revoke(self, vehicle: str, category: str, grantee: bytes) -> int:
        with self._tx() as tx:
            deleted = tx.execute(
                "DELETE FROM grants WHERE vehicle = ? AND category = ? AND grantee = ?",
                (vehicle, category, grantee),
            ).rowcount
            if not deleted:
                raise _no_grant(vehicle, category, grantee)
            return self._bump(tx, vehicle, category)

    def grants(self, *, vehicle: str | None = None, grantee: bytes | None = None) -> list[Grant]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM grants WHERE (?1 IS NULL OR vehicle = ?1) AND (?2 IS NULL OR grantee = ?2) "
            "ORDER BY vehicle, category, grantee",
            (vehicle, grantee),
        )
        return [self._grant(r) for r in rows]

    def erase_vehicle(self, vehicle: str) -> int:
        with self._tx() as tx:
            gone = tx.execute("DELETE FROM grants WHERE vehicle = ?", (vehicle,)).rowcount
            tx.execute("DELETE FROM epochs WHERE vehicle = ?", (vehicle,))
        conn = self._conn()
        conn.execute("VACUUM")  # secure_delete zeroes the rows; VACUUM and the checkpoint drop old pages
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(gone)


class ClosableGrantStore(GrantStore, Protocol):
    """A grant store holding files or connections: close it (or use it in ``with``)."""

    def close(self) -> None: ...

    def __enter__(self) -> ClosableGrantStore: ...

    def __exit__(self, *exc: object) -> None: ...


def grant_store_kind(settings: Settings) -> str:
    """``chain`` or ``sqlite``: ``access.grant_store``, where ``auto`` means chain when a ledger is deployed.

    A ledger is deployed when ``ledger.manifest`` is set, or the default manifest
    (``<data_dir>/ledger/deployment.json``, written by ``pcc ledger deploy``) exists.
    """
    kind = settings.access.grant_store
    if kind != "auto":
        return kind
    deployed = settings.ledger.manifest is not None or settings.path("ledger", "deployment.json").is_file()
    return "chain" if deployed else "sqlite"


def open_grant_store(
    settings: Settings, *, sqlite_path: str | os.PathLike[str] | None = None
) -> ClosableGrantStore:
    """The platform's grant store: the AccessRegistry (entry point ``pcc.grant_stores: chain``) or SQLite.

    ``sqlite_path`` overrides where the SQLite store lives (default ``<data_dir>/vault/grants.sqlite``).
    """
    kind = grant_store_kind(settings)
    if kind == "sqlite":
        return SqliteGrantStore(sqlite_path or settings.path("vault", "grants.sqlite"))
    from importlib.metadata import entry_points

    for ep in entry_points(group="pcc.grant_stores"):
        if ep.name == kind:
            store: ClosableGrantStore = ep.load()(settings)
            return store
    raise PccConfigError(
        f"access.grant_store is {kind!r} but no such grant store is installed "
        "(entry point group pcc.grant_stores); install pcc[ledger] or set access.grant_store = 'sqlite'"
    )
