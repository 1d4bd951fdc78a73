"""Pseudonyms: VINs and owner identities in, ``v-``/``o-`` + 32 hex out, keyed by the vault secret."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

from pipelines.errors import PccValueError
from pipelines.events.envelope import now_ms
from pipelines.vault.store import ErasableCaches, VaultStore
from pipelines.vin import validate_vin


def normalise_identity(identity: object) -> str:
    if not isinstance(identity, Mapping):
        raise PccValueError("owner identity: expected an object with 'name' and 'id_number'")
    name, id_number = identity.get("name"), identity.get("id_number")
    if not isinstance(name, str) or not name.strip():
        raise PccValueError("owner identity: 'name' must be a non-empty string")
    if not isinstance(id_number, str) or not id_number.strip():
        raise PccValueError("owner identity: 'id_number' must be a non-empty string")
    extra = sorted(set(identity) - {"name", "id_number"})
    if extra:
        raise PccValueError(f"owner identity: unexpected fields {extra}")
    canonical = {
        "id_number": re.sub(r"[\s.\-/]", "", id_number).upper(),
        "name": " ".join(name.split()).casefold(),
    }
    return json.dumps(canonical, sort_keys=True, ensure_ascii=False)


class Pseudonyms:
    """``HMAC-SHA256(secret, per-subject random salt || id)``: stable while the vault keeps the salt."""

    def __init__(self, store: VaultStore, caches: ErasableCaches) -> None:
        self._store = store
        self._caches = caches

    def vehicle(self, vin: str) -> str:
        """The vehicle pseudonym of a VIN (created on first sight)."""
        caches = self._caches
        caches.check()
        with caches.lock:
            hit = caches.pseudonyms.get(vin)
        if hit is not None:
            return hit
        pseudonym = self._vehicle(validate_vin(vin))
        if caches.enabled:
            with caches.lock:
                caches.pseudonyms[vin] = pseudonym
        return pseudonym

    def _vehicle(self, vin: str) -> str:
        conn = self._store.conn()
        row = conn.execute("SELECT pseudonym FROM vehicles WHERE vin = ?", (vin,)).fetchone()
        if row is not None:
            return str(row[0])
        salt = secrets.token_bytes(16)
        pseudonym = "v-" + self._store.mac(b"pcc-vehicle", salt, vin.encode()).hex()[:32]
        with self._store.tx() as tx:  # INSERT OR IGNORE: a concurrent writer may have won; read the winner
            tx.execute(
                "INSERT OR IGNORE INTO vehicles(vin, salt, pseudonym, created_ms) VALUES (?, ?, ?, ?)",
                (vin, salt, pseudonym, now_ms()),
            )
            row = tx.execute("SELECT pseudonym FROM vehicles WHERE vin = ?", (vin,)).fetchone()
        return str(row[0])

    def find_vehicle(self, vin: str) -> str | None:
        """The pseudonym of a VIN the vault already knows, or None (never creates one)."""
        row = (
            self._store.conn()
            .execute("SELECT pseudonym FROM vehicles WHERE vin = ?", (validate_vin(vin),))
            .fetchone()
        )
        return None if row is None else str(row[0])

    def owner_lookup(self, identity: Mapping[str, Any]) -> bytes:
        """The keyed digest an owner's normalised identity is found by."""
        return self._store.mac(b"pcc-owner-lookup", normalise_identity(identity).encode())

    def owner(self, identity: Mapping[str, Any]) -> str:
        """The owner pseudonym of ``{"name": ..., "id_number": ...}`` (created on first sight)."""
        canonical = normalise_identity(identity)
        lookup = self._store.mac(b"pcc-owner-lookup", canonical.encode())
        conn = self._store.conn()
        row = conn.execute("SELECT pseudonym FROM owners WHERE lookup = ?", (lookup,)).fetchone()
        if row is not None:
            return str(row[0])
        salt = secrets.token_bytes(16)
        pseudonym = "o-" + self._store.mac(b"pcc-owner", salt, canonical.encode()).hex()[:32]
        with self._store.tx() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO owners(lookup, identity, salt, pseudonym, created_ms) VALUES (?, ?, ?, ?, ?)",
                (lookup, canonical, salt, pseudonym, now_ms()),
            )
            row = tx.execute("SELECT pseudonym FROM owners WHERE lookup = ?", (lookup,)).fetchone()
        return str(row[0])
