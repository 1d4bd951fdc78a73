"""The identity vault: VINs and owner identities <-> pseudonyms, off-chain.

Nothing outside the vault sees a VIN or an owner's identity: envelopes carry a
vehicle pseudonym (``v-`` + 32 hex) and owner pseudonyms (``o-`` + 32 hex).
A pseudonym is ``HMAC-SHA256(vault secret, per-subject random salt || id)``,
stable for the same VIN while the vault keeps the salt, unguessable without
the vault (the secret lives in a separate 0600 key file).

The vault is one SQLite file (WAL mode, one connection per thread, so several
threads and processes may share it).  It also keeps per-vehicle, per-category
data keys for the access-control layer (random 32-byte keys: deleting them
makes data encrypted with them unreadable) and an audit log of erasures,
disclosures and grants that names pseudonyms and caller roles only.

Erasure (GDPR art. 17) deletes the VIN, the salt, the owner identities linked
only to that vehicle and the vehicle's data keys, with ``secure_delete``, a
``VACUUM`` and a WAL truncation so the plaintext is not left in free pages.
Pseudonyms computed before stay wherever they were written, but nothing can
link them back; pseudonymising the same VIN again gives a new pseudonym.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from cachetools import FIFOCache, LRUCache
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pipelines.errors import PccConfigError, PccNotFoundError, PccPermissionError, PccValueError
from pipelines.events.categories import CATEGORIES
from pipelines.events.envelope import OWNER_PSEUDONYM, VEHICLE_PSEUDONYM, now_ms
from pipelines.files import secret_file
from pipelines.settings import Settings, VaultSettings
from pipelines.sqlite import ThreadLocalSqlite
from pipelines.vin import validate_vin

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


def _load_or_create_key(path: Path) -> bytes:
    """The vault secret from ``path``, created (32 random bytes, hex, mode 0600) on first use."""
    try:
        text = secret_file(path, lambda: secrets.token_hex(32), "vault key")
    except PermissionError as exc:
        raise PccConfigError(str(exc)) from None
    if not re.fullmatch(r"[0-9a-f]{64,}", text):
        raise PccConfigError(f"vault key file {path} must hold at least 64 lower-case hex digits")
    return bytes.fromhex(text)


def _normalise_identity(identity: object) -> str:
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


class IdentityVault:
    """Pseudonyms for VINs and owners, ownership records, data keys, erasure.

    ``IdentityVault(settings)`` uses ``settings.vault`` (default files under
    ``data_dir/vault/``); ``IdentityVault(path, key)`` takes the SQLite file and
    either the secret itself (bytes) or the key file (default ``vault.key``
    beside the database).  Safe to share between threads; each process opens
    its own.
    """

    def __init__(
        self,
        source: Settings | str | os.PathLike[str],
        key: bytes | str | os.PathLike[str] | None = None,
        *,
        resolve_roles: Iterable[str] | None = None,
        cache_size: int | None = None,
        cache_check_s: float | None = None,
    ) -> None:
        if isinstance(source, Settings):
            section = source.vault
            self.path = section.path or source.path("vault", "identity.sqlite")
            key = key if key is not None else (section.key_file or source.path("vault", "vault.key"))
        else:
            section = VaultSettings()
            self.path = Path(source)
            key = key if key is not None else self.path.parent / "vault.key"
        if isinstance(key, bytes):
            if len(key) < 32:
                raise PccConfigError("vault secret: must be at least 32 bytes")
            self._secret = key
        else:
            self._secret = _load_or_create_key(Path(key))
        self.resolve_roles = frozenset(section.resolve_roles if resolve_roles is None else resolve_roles)
        self._cache_size = section.cache_size if cache_size is None else cache_size
        self._cache_check_s = section.cache_check_s if cache_check_s is None else cache_check_s
        #: VIN -> pseudonym, least recently used dropped first (cachetools is not thread-safe: _cache_lock)
        self._cache: LRUCache[str, str] = LRUCache(maxsize=max(self._cache_size, 1))
        #: (vehicle, category, epoch) -> data key, for sealing only (data_key(cached=True))
        self._keys: FIFOCache[tuple[str, str, int], bytes] = FIFOCache(maxsize=max(self._cache_size, 1))
        self._cache_lock = threading.Lock()
        self._cache_generation = -1
        self._cache_checked = 0.0
        self._db = ThreadLocalSqlite(
            self.path,
            pragmas=("journal_mode=WAL", "secure_delete=ON", "foreign_keys=ON", "synchronous=NORMAL"),
            on_connect=self._private,
        )
        self._conn = self._db.conn
        self._tx = self._db.tx
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._conn().executescript(_SCHEMA)

    # --- plumbing ---------------------------------------------------------------------------

    def _private(self, _conn: sqlite3.Connection) -> None:
        with suppress(OSError):
            os.chmod(self.path, 0o600)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> IdentityVault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mac(self, label: bytes, *parts: bytes) -> bytes:
        return hmac.new(self._secret, label + b"\x00" + b"\x00".join(parts), hashlib.sha256).digest()

    def _generation(self) -> int:
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'erase_generation'").fetchone()
        return int(row[0])

    def _check_cache(self) -> None:
        """Drop cached pseudonyms when another vault object (or process) erased something."""
        now = time.monotonic()
        if now - self._cache_checked < self._cache_check_s:
            return
        generation = self._generation()
        with self._cache_lock:
            self._cache_checked = now
            if generation != self._cache_generation:
                self._cache.clear()
                self._keys.clear()
                self._cache_generation = generation

    def _vehicle_id(self, conn: sqlite3.Connection, vehicle: str) -> int:
        row = conn.execute("SELECT id FROM vehicles WHERE pseudonym = ?", (vehicle,)).fetchone()
        if row is None:
            raise PccNotFoundError(f"unknown vehicle pseudonym {vehicle}")
        return int(row[0])

    # --- pseudonyms -------------------------------------------------------------------------

    def pseudonymize_vehicle(self, vin: str) -> str:
        """The vehicle pseudonym of a VIN (created on first sight): ``v-`` + 32 hex."""
        self._check_cache()
        with self._cache_lock:
            hit = self._cache.get(vin)
            if hit is not None:
                return hit
        normalised = validate_vin(vin)
        pseudonym = self._vehicle_pseudonym(normalised)
        if self._cache_size > 0:
            with self._cache_lock:
                self._cache[vin] = pseudonym
        return pseudonym

    def _vehicle_pseudonym(self, vin: str) -> str:
        conn = self._conn()
        row = conn.execute("SELECT pseudonym FROM vehicles WHERE vin = ?", (vin,)).fetchone()
        if row is not None:
            return str(row[0])
        salt = secrets.token_bytes(16)
        pseudonym = "v-" + self._mac(b"pcc-vehicle", salt, vin.encode()).hex()[:32]
        with self._tx() as tx:  # INSERT OR IGNORE: a concurrent writer may have won; read the winner
            tx.execute(
                "INSERT OR IGNORE INTO vehicles(vin, salt, pseudonym, created_ms) VALUES (?, ?, ?, ?)",
                (vin, salt, pseudonym, now_ms()),
            )
            row = tx.execute("SELECT pseudonym FROM vehicles WHERE vin = ?", (vin,)).fetchone()
        return str(row[0])

    def find_vehicle(self, vin: str) -> str | None:
        """The pseudonym of a VIN the vault already knows, or None (never creates one)."""
        row = (
            self._conn()
            .execute("SELECT pseudonym FROM vehicles WHERE vin = ?", (validate_vin(vin),))
            .fetchone()
        )
        return None if row is None else str(row[0])

    def export_vehicle(self, vehicle: str) -> dict[str, Any]:
        """Everything the vault holds on one vehicle (GDPR art. 15), keys excepted.

        ``{"vin", "vehicle", "created_ms", "owners": [{"owner", "since_ms", "identity"}],
        "data_keys": {category: [epochs]}}``; the caller must have authenticated the data subject.
        """
        conn = self._conn()
        row = conn.execute(
            "SELECT id, vin, created_ms FROM vehicles WHERE pseudonym = ?", (vehicle,)
        ).fetchone()
        if row is None:
            raise PccNotFoundError(f"unknown vehicle pseudonym {vehicle}")
        owners = [
            {"owner": str(r[0]), "since_ms": int(r[1]), "identity": json.loads(r[2])}
            for r in conn.execute(
                "SELECT o.pseudonym, w.since_ms, o.identity FROM ownership w JOIN owners o ON o.id = w.owner_id "
                "WHERE w.vehicle_id = ? ORDER BY w.since_ms, w.id",
                (row[0],),
            )
        ]
        epochs: dict[str, list[int]] = {}
        for category, epoch in conn.execute(
            "SELECT category, epoch FROM data_keys WHERE vehicle_id = ? ORDER BY category, epoch", (row[0],)
        ):
            epochs.setdefault(str(category), []).append(int(epoch))
        return {
            "vin": str(row[1]),
            "vehicle": vehicle,
            "created_ms": int(row[2]),
            "owners": owners,
            "data_keys": epochs,
        }

    def pseudonymize_owner(self, identity: Mapping[str, Any]) -> str:
        """The owner pseudonym of ``{"name": ..., "id_number": ...}``: ``o-`` + 32 hex.

        The same person (case, spaces and separators in the id number ignored)
        gets the same pseudonym.  Call :meth:`record_ownership` too, so that an
        erasure of the vehicle finds the owner.
        """
        canonical = _normalise_identity(identity)
        lookup = self._mac(b"pcc-owner-lookup", canonical.encode())
        conn = self._conn()
        row = conn.execute("SELECT pseudonym FROM owners WHERE lookup = ?", (lookup,)).fetchone()
        if row is not None:
            return str(row[0])
        salt = secrets.token_bytes(16)
        pseudonym = "o-" + self._mac(b"pcc-owner", salt, canonical.encode()).hex()[:32]
        with self._tx() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO owners(lookup, identity, salt, pseudonym, created_ms) VALUES (?, ?, ?, ?, ?)",
                (lookup, canonical, salt, pseudonym, now_ms()),
            )
            row = tx.execute("SELECT pseudonym FROM owners WHERE lookup = ?", (lookup,)).fetchone()
        return str(row[0])

    # --- ownership --------------------------------------------------------------------------

    def record_ownership(self, vehicle: str, owner: str, *, since_ms: int | None = None) -> None:
        """Record that ``owner`` (pseudonym) owns ``vehicle`` (pseudonym) from ``since_ms`` on."""
        if not OWNER_PSEUDONYM.match(owner):
            raise PccValueError("owner: expected an owner pseudonym o- + 32 hex")
        with self._tx() as tx:
            vehicle_id = self._vehicle_id(tx, vehicle)
            row = tx.execute("SELECT id FROM owners WHERE pseudonym = ?", (owner,)).fetchone()
            if row is None:
                raise PccNotFoundError(f"unknown owner pseudonym {owner}")
            tx.execute(
                "INSERT INTO ownership(vehicle_id, owner_id, since_ms) VALUES (?, ?, ?)",
                (vehicle_id, row[0], now_ms() if since_ms is None else since_ms),
            )

    def current_owner(self, vehicle: str) -> str | None:
        """The owner pseudonym recorded last for ``vehicle`` (latest ``since_ms``), or None."""
        conn = self._conn()
        vehicle_id = self._vehicle_id(conn, vehicle)
        row = conn.execute(
            "SELECT o.pseudonym FROM ownership w JOIN owners o ON o.id = w.owner_id "
            "WHERE w.vehicle_id = ? ORDER BY w.since_ms DESC, w.id DESC LIMIT 1",
            (vehicle_id,),
        ).fetchone()
        return None if row is None else str(row[0])

    # --- disclosure -------------------------------------------------------------------------

    def resolve(self, vehicle: str, *, caller: str) -> str:
        """The VIN behind a vehicle pseudonym, for a caller whose role is in ``resolve_roles``."""
        if caller not in self.resolve_roles:
            self.record_audit("resolve_denied", subject=vehicle, actor=caller)
            allowed = ", ".join(sorted(self.resolve_roles)) or "none"
            raise PccPermissionError(
                f"role {caller!r} may not resolve vehicle pseudonyms (allowed: {allowed})"
            )
        row = self._conn().execute("SELECT vin FROM vehicles WHERE pseudonym = ?", (vehicle,)).fetchone()
        if row is None:
            raise PccNotFoundError(f"unknown vehicle pseudonym {vehicle}")
        self.record_audit("resolve", subject=vehicle, actor=caller)
        return str(row[0])

    # --- data keys --------------------------------------------------------------------------

    def data_key(self, vehicle: str, category: str, epoch: int = 0, *, cached: bool = False) -> bytes:
        """The 32-byte key for one vehicle's data of one category in one key epoch (created on first use).

        ``cached``: for sealing only (the producer SDK, the speed layer on
        version 1), a key read before may be given from memory; an erasure by
        this object drops it at once, one by another object or process within
        ``vault.cache_check_s`` (as cached pseudonyms).  Releasing a key to a
        grantee never uses the cache.
        """
        if cached:
            self._check_cache()
            with self._cache_lock:
                hit = self._keys.get((vehicle, category, epoch))
            if hit is not None:
                return hit
            key = self.data_key(vehicle, category, epoch)
            if self._cache_size > 0:
                with self._cache_lock:
                    self._keys[(vehicle, category, epoch)] = key
            return key
        if category not in CATEGORIES:
            raise PccValueError(f"category: {category!r} is not one of {sorted(CATEGORIES)}")
        if type(epoch) is not int or epoch < 0:
            raise PccValueError("epoch: must be a non-negative integer")
        conn = self._conn()
        vehicle_id = self._vehicle_id(conn, vehicle)
        query = "SELECT key FROM data_keys WHERE vehicle_id = ? AND category = ? AND epoch = ?"
        row = conn.execute(query, (vehicle_id, category, epoch)).fetchone()
        if row is None:
            with self._tx() as tx:
                tx.execute(
                    "INSERT OR IGNORE INTO data_keys(vehicle_id, category, epoch, key, created_ms) VALUES (?, ?, ?, ?, ?)",
                    (vehicle_id, category, epoch, secrets.token_bytes(32), now_ms()),
                )
                row = tx.execute(query, (vehicle_id, category, epoch)).fetchone()
        return bytes(row[0])

    # --- delegated owner keys -----------------------------------------------------------------

    def _owner_signing_key(self, owner: str) -> Ed25519PrivateKey:
        row = self._conn().execute("SELECT salt FROM owners WHERE pseudonym = ?", (owner,)).fetchone()
        if row is None:
            raise PccNotFoundError(f"unknown owner pseudonym {owner}")
        # derived from the owner's salt: erasing the owner erases the key with it
        return Ed25519PrivateKey.from_private_bytes(self._mac(b"pcc-owner-signing", bytes(row[0])))

    def owner_public_key(self, owner: str) -> bytes:
        """The raw 32-byte Ed25519 public key of the signing key the vault holds for ``owner``."""
        return self._owner_signing_key(owner).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign_as_owner(self, owner: str, message: bytes) -> bytes:
        """Sign ``message`` with the owner's delegated Ed25519 key (the owner never handles it).

        The caller must have authenticated the owner; the key is derived from the
        owner's salt, so erasing the owner makes it unusable.
        """
        return self._owner_signing_key(owner).sign(message)

    # --- audit ------------------------------------------------------------------------------

    def record_audit(
        self, action: str, *, subject: str | None = None, actor: str | None = None, detail: str | None = None
    ) -> None:
        """Append to the audit log.  ``subject`` must be a pseudonym; never pass a VIN or a name."""
        if subject is not None and not (VEHICLE_PSEUDONYM.match(subject) or OWNER_PSEUDONYM.match(subject)):
            subject = None  # the log names pseudonyms only
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO audit_log(at_ms, action, subject, actor, detail) VALUES (?, ?, ?, ?, ?)",
                (now_ms(), action, subject, actor, detail),
            )

    def audit_entries(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest audit entries, newest first."""
        rows = self._conn().execute(
            "SELECT at_ms, action, subject, actor, detail FROM audit_log ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [dict(zip(("at_ms", "action", "subject", "actor", "detail"), r, strict=True)) for r in rows]

    # --- erasure ----------------------------------------------------------------------------

    def erase(self, vin_or_pseudonym: str, *, actor: str | None = None) -> str:
        """Erase a vehicle (by VIN or pseudonym); returns the pseudonym it had.

        Deletes the VIN, its salt, its data keys, its ownership records and the
        identities of owners linked to no other vehicle, then scrubs the file.
        """
        key = vin_or_pseudonym.strip()
        with self._tx() as tx:
            if VEHICLE_PSEUDONYM.match(key):
                row = tx.execute("SELECT id, pseudonym FROM vehicles WHERE pseudonym = ?", (key,)).fetchone()
            else:
                vin = validate_vin(key)
                row = tx.execute("SELECT id, pseudonym FROM vehicles WHERE vin = ?", (vin,)).fetchone()
            if row is None:
                raise PccNotFoundError("no such vehicle in the identity vault (already erased or never seen)")
            vehicle_id, pseudonym = int(row[0]), str(row[1])
            owner_ids = [
                r[0] for r in tx.execute("SELECT owner_id FROM ownership WHERE vehicle_id = ?", (vehicle_id,))
            ]
            tx.execute("DELETE FROM ownership WHERE vehicle_id = ?", (vehicle_id,))
            tx.execute("DELETE FROM data_keys WHERE vehicle_id = ?", (vehicle_id,))
            tx.execute("DELETE FROM vehicles WHERE id = ?", (vehicle_id,))
            erased_owners = 0
            for owner_id in set(owner_ids):
                if (
                    tx.execute("SELECT 1 FROM ownership WHERE owner_id = ? LIMIT 1", (owner_id,)).fetchone()
                    is None
                ):
                    tx.execute("DELETE FROM owners WHERE id = ?", (owner_id,))
                    erased_owners += 1
            tx.execute("UPDATE meta SET value = value + 1 WHERE key = 'erase_generation'")
            tx.execute(
                "INSERT INTO audit_log(at_ms, action, subject, actor, detail) VALUES (?, 'erase', ?, ?, ?)",
                (now_ms(), pseudonym, actor, f"owners erased: {erased_owners}"),
            )
        with self._cache_lock:
            self._cache.clear()
            self._keys.clear()
            self._cache_checked = 0.0
        self._scrub()
        return pseudonym

    def erase_owner(self, identity_or_pseudonym: Mapping[str, Any] | str, *, actor: str | None = None) -> str:
        """Erase one owner's identity (and ownership records); returns the owner pseudonym it had."""
        with self._tx() as tx:
            if isinstance(identity_or_pseudonym, str):
                row = tx.execute(
                    "SELECT id, pseudonym FROM owners WHERE pseudonym = ?", (identity_or_pseudonym,)
                ).fetchone()
            else:
                lookup = self._mac(b"pcc-owner-lookup", _normalise_identity(identity_or_pseudonym).encode())
                row = tx.execute("SELECT id, pseudonym FROM owners WHERE lookup = ?", (lookup,)).fetchone()
            if row is None:
                raise PccNotFoundError("no such owner in the identity vault (already erased or never seen)")
            tx.execute("DELETE FROM owners WHERE id = ?", (row[0],))  # ownership rows cascade
            tx.execute(
                "INSERT INTO audit_log(at_ms, action, subject, actor, detail) VALUES (?, 'erase_owner', ?, ?, NULL)",
                (now_ms(), row[1], actor),
            )
        self._scrub()
        return str(row[1])

    def _scrub(self) -> None:
        """Rewrite the file without free pages and empty the WAL, so deleted plaintext is gone from disk."""
        conn = self._conn()
        conn.execute("VACUUM")
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:  # a reader in another thread/process holds an old snapshot; try once more shortly
            time.sleep(0.2)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
