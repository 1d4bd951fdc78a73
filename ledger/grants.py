"""Grants and key epochs on the AccessRegistry: the platform's grant store when a ledger is deployed.

:class:`ChainGrantStore` satisfies :class:`pipelines.access.store.GrantStore`
(entry point ``pcc.grant_stores: chain``, opened by
:func:`pipelines.access.store.open_grant_store`).  The chain is the authority:

- ``put`` sends ``AccessRegistry.grant`` (registering the vehicle pseudonym's
  hash first if needed) with the epoch the grantor signed, the grantor's kind
  (owner or producer) and the SHA-256 of the signed grant message;
- ``revoke`` sends ``revoke`` (the contract bumps the epoch); ``bump`` sends
  ``rotate`` (ownership change, erasure: a new epoch without a revocation);
- ``epoch``, ``get`` and ``grants`` read an in-memory index of the registry's
  events (``VehicleRegistered``, ``Granted``, ``Revoked``, ``Rotated``), built
  from the deployment block over explicit block ranges and brought to the head
  at most once every ``refresh_s`` seconds (and at once after each write), so a
  hot path (the speed layer sealing, the serving layer releasing keys) costs no
  RPC per event.

What the chain never sees (personal data and the grantor's identity) stays
beside the identity vault in a small SQLite file of *grant details*: the
vehicle pseudonym, category, grantee, grantor (``owner:<o-pseudonym>`` or
``producer:<source_id>``) and signature, keyed by the grant hash.  A grant is
honoured only if its details hash to the hash on chain; a grant on chain
without matching details (made by another node, or details lost) is not
honoured, and erasure revokes it anyway.  Erasing a vehicle revokes its grants
on chain and deletes its details.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ledger import keys
from ledger.client import LedgerClient
from ledger.indexer import LedgerIndexer
from ledger.market import GrantRecord
from ledger.tokens import Key
from pipelines.access.grants import grant_message
from pipelines.access.store import Grant
from pipelines.access.wrap import fingerprint
from pipelines.errors import PccValueError
from pipelines.events.categories import CATEGORIES
from pipelines.settings import Settings

EVENTS = ("VehicleRegistered", "Granted", "Revoked", "Rotated")
_KINDS = {1: "owner", 2: "producer"}


@lru_cache(maxsize=1 << 16)
def _vehicle_key(pseudonym: str) -> bytes:
    return keys.vehicle_key(pseudonym)


@lru_cache(maxsize=64)
def _category_key(category: str) -> bytes:
    return keys.category_key(category)


_CATEGORY_NAMES = {keys.category_key(c): c for c in CATEGORIES}


def grant_hash(grant: Grant) -> bytes:
    """SHA-256 of the message the grantor signed (what the AccessRegistry records)."""
    message = grant_message(
        grant.grantee, grant.vehicle, grant.category, grant.expiry_s, grant.epoch, grant.grantor
    )
    return hashlib.sha256(message).digest()


@dataclass(frozen=True)
class AccessEvent:
    """One AccessRegistry event about a vehicle, as an auditor reads it (hashes, no personal data)."""

    event: str
    category: str
    consumer: str | None  # the consumer key's fingerprint
    epoch: int
    expiry: int | None = None
    grantor_kind: str | None = None
    grant_hash: str | None = None
    block: int = 0
    tx_hash: str = ""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS grant_details (
    grant_hash BLOB PRIMARY KEY,
    vehicle TEXT NOT NULL,
    category TEXT NOT NULL,
    grantee BLOB NOT NULL,
    expiry_s INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    grantor TEXT NOT NULL,
    signature BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS grant_details_vehicle ON grant_details(vehicle);
"""


class _Details:
    """The off-chain half of each grant, keyed by its hash (one connection, serialised)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA secure_delete=ON")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._by_hash: dict[bytes, Grant] = {}  # a hash names one grant forever: safe to cache

    def put(self, digest: bytes, g: Grant) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO grant_details VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (digest, g.vehicle, g.category, g.grantee, g.expiry_s, g.epoch, g.grantor, g.signature),
            )

    def drop(self, digest: bytes) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM grant_details WHERE grant_hash = ?", (digest,))
            self._by_hash.pop(digest, None)

    def get(self, digest: bytes) -> Grant | None:
        hit = self._by_hash.get(digest)
        if hit is not None:
            return hit
        with self._lock:
            row = self._conn.execute(
                "SELECT grantee, vehicle, category, expiry_s, epoch, grantor, signature "
                "FROM grant_details WHERE grant_hash = ?",
                (digest,),
            ).fetchone()
        if row is None:
            return None
        g = Grant(
            bytes(row[0]), str(row[1]), str(row[2]), int(row[3]), int(row[4]), str(row[5]), bytes(row[6])
        )
        if grant_hash(g) != digest:  # edited on disk: not the grant the chain recorded
            return None
        self._by_hash[digest] = g
        return g

    def erase(self, vehicle: str) -> int:
        with self._lock:
            gone = self._conn.execute("DELETE FROM grant_details WHERE vehicle = ?", (vehicle,)).rowcount
            self._by_hash = {h: g for h, g in self._by_hash.items() if g.vehicle != vehicle}
            self._conn.execute(
                "VACUUM"
            )  # secure_delete zeroes the rows; VACUUM and the checkpoint drop pages
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(gone)

    def close(self) -> None:
        self._conn.close()


class ChainGrantStore:
    """A :class:`~pipelines.access.store.GrantStore` on the AccessRegistry (see the module docstring).

    ``as_`` signs the transactions (an account holding GRANTOR_ROLE and REGISTRAR_ROLE;
    default the client's operator).  ``clock`` is monotonic seconds, for ``refresh_s``.
    """

    name = "grants (AccessRegistry)"

    def __init__(
        self,
        client: LedgerClient,
        details_path: str | os.PathLike[str],
        *,
        refresh_s: float = 1.0,
        as_: Key = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if refresh_s < 0:
            raise PccValueError(f"access.cache_s must not be negative, got {refresh_s}")
        self.client = client
        self.refresh_s = refresh_s
        self._signer = as_
        self._clock = clock
        self._details = _Details(Path(details_path))
        self._indexer = LedgerIndexer(client)
        self._lock = threading.RLock()
        self._cursor = client.deployment.block
        self._refreshed: float | None = None
        self._registered: set[bytes] = set()
        self._epochs: dict[tuple[bytes, bytes], int] = {}
        self._live: dict[tuple[bytes, bytes, bytes], GrantRecord] = {}

    # --- the index of the registry's events ----------------------------------------------

    def refresh(self, *, force: bool = False) -> int:
        """Bring the index to the chain's head (unless done less than ``refresh_s`` ago); returns events read."""
        now = self._clock()
        if not force and self._refreshed is not None and now - self._refreshed < self.refresh_s:
            return 0
        with self._lock:
            head = self.client.block_number
            found = []
            for name in EVENTS:
                found.extend(self._indexer.events("AccessRegistry", name, self._cursor, head))
            found.sort(key=lambda e: (e.block, e.log_index))
            for e in found:
                self._apply(e.event, e.args)
            self._cursor = max(self._cursor, head + 1)
            self._refreshed = now
        return len(found)

    def _apply(self, event: str, args: dict[str, Any]) -> None:
        vehicle = bytes(args["vehicle"])
        if event == "VehicleRegistered":
            self._registered.add(vehicle)
            return
        pair = (vehicle, bytes(args["category"]))
        if event == "Granted":
            self._live[(*pair, bytes(args["consumerKey"]))] = GrantRecord(
                int(args["expiry"]),
                int(args["epoch"]),
                _KINDS[int(args["grantorKind"])],
                bytes(args["grantHash"]),
            )
        elif event == "Revoked":
            self._live.pop((*pair, bytes(args["consumerKey"])), None)
            self._epochs[pair] = int(args["newEpoch"])
        elif event == "Rotated":
            self._epochs[pair] = int(args["newEpoch"])

    def _verified(self, vehicle_key: bytes, category_key: bytes, grantee: bytes) -> Grant | None:
        record = self._live.get((vehicle_key, category_key, grantee))
        if record is None:
            return None
        g = self._details.get(record.grant_hash)
        if g is None or (g.grantee, g.expiry_s, g.epoch) != (grantee, record.expiry, record.epoch):
            return None
        if g.grantor.partition(":")[0] != record.grantor_kind:
            return None
        return g

    # --- GrantStore -----------------------------------------------------------------------

    def epoch(self, vehicle: str, category: str) -> int:
        self.refresh()
        return self._epochs.get((_vehicle_key(vehicle), _category_key(category)), 0)

    def get(self, vehicle: str, category: str, grantee: bytes) -> Grant | None:
        self.refresh()
        return self._verified(_vehicle_key(vehicle), _category_key(category), grantee)

    def grants(self, *, vehicle: str | None = None, grantee: bytes | None = None) -> list[Grant]:
        self.refresh()
        wanted = None if vehicle is None else _vehicle_key(vehicle)
        found = [
            g
            for (v, c, k) in list(self._live)
            if wanted in (None, v) and grantee in (None, k) and (g := self._verified(v, c, k)) is not None
        ]
        return sorted(found, key=lambda g: (g.vehicle, g.category, g.grantee))

    def _ensure_vehicle(self, vehicle: str) -> None:
        key = _vehicle_key(vehicle)
        self.refresh()
        if key not in self._registered:
            self._absorb(self.client.access.register_vehicles([vehicle], as_=self._signer))
            self._registered.add(key)

    def put(self, grant: Grant) -> Grant:
        """Record ``grant`` on chain at the epoch it was signed for (a newer epoch: ``StaleEpoch``)."""
        kind = grant.grantor.partition(":")[0]
        digest = grant_hash(grant)
        with self._lock:
            self._ensure_vehicle(grant.vehicle)
            self._details.put(digest, grant)  # first: a grant on chain always finds its details
            try:
                self.client.access.grant(
                    grant.vehicle,
                    grant.category,
                    grant.grantee,
                    grant.expiry_s,
                    epoch=grant.epoch,
                    grantor_kind=kind,
                    grant_hash=digest,
                    as_=self._signer,
                )
            except BaseException:
                self._details.drop(digest)
                raise
            self.refresh(force=True)
        return grant

    def revoke(self, vehicle: str, category: str, grantee: bytes) -> int:
        with self._lock:
            self.client.access.revoke(vehicle, category, grantee, as_=self._signer)
            self.refresh(force=True)
            return self._epochs[(_vehicle_key(vehicle), _category_key(category))]

    def bump(self, vehicle: str, category: str) -> int:
        with self._lock:
            self._ensure_vehicle(vehicle)
            receipt = self.client.access.rotate(vehicle, category, as_=self._signer)
            # the new epoch is in the receipt's own event: no index refresh (six calls) per rotation
            self._absorb(receipt)
            return self._epochs[(_vehicle_key(vehicle), _category_key(category))]

    def bump_many(self, vehicle: str, categories: Sequence[str]) -> dict[str, int]:
        """One ``rotateMany`` transaction (a sale rotates every protected category: one, not three)."""
        with self._lock:
            self._ensure_vehicle(vehicle)
            receipt = self.client.access.rotate_many(vehicle, list(categories), as_=self._signer)
            self._absorb(receipt)
            key = _vehicle_key(vehicle)
            return {c: self._epochs[(key, _category_key(c))] for c in categories}

    def _absorb(self, receipt: Any) -> None:
        """Apply the registry events of one of our own transactions (a later refresh re-applies them alike)."""
        from web3.logs import DISCARD

        registry = self.client.access.registry
        found = [
            (log["logIndex"], name, log["args"])
            for name in EVENTS
            for log in registry.events[name]().process_receipt(receipt, errors=DISCARD)
        ]
        for _, name, args in sorted(found, key=lambda f: f[0]):
            self._apply(name, args)

    def erase_vehicle(self, vehicle: str) -> int:
        """Revoke every grant of ``vehicle`` on chain (with or without details here), delete its details."""
        with self._lock:
            self.refresh(force=True)
            key = _vehicle_key(vehicle)
            revoked = 0
            for v, category_key, consumer in list(self._live):
                category = _CATEGORY_NAMES.get(category_key)
                if v != key or category is None:  # not a platform category: nothing of ours reads with it
                    continue
                self.client.access.revoke(vehicle, category, consumer, as_=self._signer)
                revoked += 1
            self._details.erase(vehicle)
            self.refresh(force=True)
        return revoked

    # --- audit ----------------------------------------------------------------------------

    def history(self, vehicle: str) -> list[AccessEvent]:
        """Every grant, revocation and rotation of ``vehicle`` on chain, oldest first."""
        topic = ["0x" + _vehicle_key(vehicle).hex()]
        head = self.client.block_number
        start = self.client.deployment.block
        found = []
        for name in EVENTS[1:]:
            found.extend(self._indexer.events("AccessRegistry", name, start, head, topic))
        found.sort(key=lambda e: (e.block, e.log_index))
        out = []
        for e in found:
            a = e.args
            category = _CATEGORY_NAMES.get(bytes(a["category"]), "0x" + bytes(a["category"]).hex())
            consumer = fingerprint(bytes(a["consumerKey"])) if "consumerKey" in a else None
            if e.event == "Granted":
                out.append(
                    AccessEvent(
                        "granted", category, consumer, int(a["epoch"]), int(a["expiry"]),
                        _KINDS[int(a["grantorKind"])], bytes(a["grantHash"]).hex(), e.block, e.tx_hash,
                    )
                )  # fmt: skip
            else:
                event = "revoked" if e.event == "Revoked" else "rotated"
                out.append(
                    AccessEvent(
                        event, category, consumer, int(a["newEpoch"]), block=e.block, tx_hash=e.tx_hash
                    )
                )
        return out

    def close(self) -> None:
        self._details.close()

    def __enter__(self) -> ChainGrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def grant_store_from_settings(settings: Settings) -> ChainGrantStore:
    """The store of ``settings``' deployment, signing as the operator; details beside the vault."""
    return ChainGrantStore(
        LedgerClient.from_settings(settings),
        settings.path("vault", "grant-details.sqlite"),
        refresh_s=settings.access.cache_s,
    )
