"""Keys the vault holds: per-vehicle data keys (deleting one makes what it sealed unreadable) and
the owners' delegated signing keys."""

from __future__ import annotations

import secrets
import sqlite3

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pipelines.errors import PccNotFoundError, PccValueError
from pipelines.events.categories import CATEGORIES
from pipelines.events.envelope import now_ms
from pipelines.vault.store import ErasableCaches, VaultStore


class DataKeys:
    """Random 32-byte keys, one per vehicle, category and key epoch."""

    def __init__(self, store: VaultStore, caches: ErasableCaches) -> None:
        self._store = store
        self._caches = caches

    def get(self, vehicle: str, category: str, epoch: int = 0, *, cached: bool = False) -> bytes:
        """The key (created on first use).  ``cached``: for sealing only, a key read before may come
        from memory (see :meth:`pipelines.vault.IdentityVault.data_key`)."""
        if not cached:
            return self._read(vehicle, category, epoch)
        caches = self._caches
        caches.check()
        with caches.lock:
            hit = caches.keys.get((vehicle, category, epoch))
        if hit is not None:
            return hit
        key = self._read(vehicle, category, epoch)
        if caches.enabled:
            with caches.lock:
                caches.keys[(vehicle, category, epoch)] = key
        return key

    def _read(self, vehicle: str, category: str, epoch: int) -> bytes:
        if category not in CATEGORIES:
            raise PccValueError(f"category: {category!r} is not one of {sorted(CATEGORIES)}")
        if type(epoch) is not int or epoch < 0:
            raise PccValueError("epoch: must be a non-negative integer")
        conn = self._store.conn()
        vehicle_id = self._store.vehicle_id(conn, vehicle)
        query = "SELECT key FROM data_keys WHERE vehicle_id = ? AND category = ? AND epoch = ?"
        row = conn.execute(query, (vehicle_id, category, epoch)).fetchone()
        if row is None:
            with self._store.tx() as tx:
                tx.execute(
                    "INSERT OR IGNORE INTO data_keys(vehicle_id, category, epoch, key, created_ms) VALUES (?, ?, ?, ?, ?)",
                    (vehicle_id, category, epoch, secrets.token_bytes(32), now_ms()),
                )
                row = tx.execute(query, (vehicle_id, category, epoch)).fetchone()
        return bytes(row[0])

    @staticmethod
    def epochs(conn: sqlite3.Connection, vehicle_id: int) -> dict[str, list[int]]:
        """The key epochs a vehicle has, by category (never the keys)."""
        epochs: dict[str, list[int]] = {}
        for category, epoch in conn.execute(
            "SELECT category, epoch FROM data_keys WHERE vehicle_id = ? ORDER BY category, epoch", (vehicle_id,)
        ):
            epochs.setdefault(str(category), []).append(int(epoch))
        return epochs


class OwnerKeys:
    """Ed25519 keys derived from each owner's salt: erasing the owner erases the key with it."""

    def __init__(self, store: VaultStore) -> None:
        self._store = store

    def _private(self, owner: str) -> Ed25519PrivateKey:
        row = self._store.conn().execute("SELECT salt FROM owners WHERE pseudonym = ?", (owner,)).fetchone()
        if row is None:
            raise PccNotFoundError(f"unknown owner pseudonym {owner}")
        return Ed25519PrivateKey.from_private_bytes(self._store.mac(b"pcc-owner-signing", bytes(row[0])))

    def public_key(self, owner: str) -> bytes:
        """The raw 32-byte public key."""
        return self._private(owner).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, owner: str, message: bytes) -> bytes:
        return self._private(owner).sign(message)
