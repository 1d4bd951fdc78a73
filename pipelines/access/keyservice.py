"""The key service: sealing keys for producers in other organisations, never a copy of the vault.

A producer outside the platform's organisation seals protected fields at its
source (contract version 2) with the vehicle's *current* data key of each
protected category.  It asks the platform's serving API for them
(``POST /v1/keys/current``, :mod:`serving.keys`) with a request signed like
every other request of the HTTP surface: EIP-712, bound to the deployment's
chain id and Marketplace and to the service's host, by the account the
SourceRegistry on the ledger holds for the source.  This module is the
decision once the request is authenticated and the source checked:

* :meth:`KeyService.register` records the source's X25519 public key, the only
  key answers are ever wrapped to (a request cannot name another one);
* :meth:`KeyService.current_keys` takes a VIN, not a pseudonym: a producer gets
  the keys of a car it knows (it has the car's VIN in its own records), never
  those of a pseudonym read from a public view.  The answer is the vehicle's
  pseudonym (the producer needs it for the envelope) and each current key
  wrapped (HPKE, :func:`~pipelines.access.wrap.wrap_key`, bound to vehicle,
  category and epoch) to the registered key.

Every release and every refusal is written to the vault's audit log: source,
vehicle pseudonym, categories and epochs, fingerprint of the wrapping key -
never a key or a VIN.  The vault remains the only place a key lives in clear on
the platform's side; the producer holds an unwrapped key in memory for its
cache (1 s, as every sealing key ring).

What a producer can do with a current key: seal new data of that vehicle and
category - and open what others sealed under the same (vehicle, category,
epoch), since keys are per vehicle and category, not per source (the same
trade-off as producer grants, docs/access.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pipelines.errors import PccValueError
from pipelines.events.categories import PROTECTED_CATEGORIES
from pipelines.events.envelope import SOURCE_ID, now_ms
from pipelines.sqlite import ThreadLocalSqlite
from pipelines.vin import validate_vin

from .errors import AccessDenied
from .keys import KeyRing
from .wrap import fingerprint, parse_public_key, wrap_key

#: where the HTTP routes answer (:mod:`serving.keys`)
CURRENT_PATH = "/v1/keys/current"
REGISTER_PATH = "/v1/keys/producer-key"


class UnknownCategory(PccValueError):
    """A category that is not one of the protected ones (public fields are never sealed): HTTP 400."""


class NoProducerKey(AccessDenied):
    """The source has registered no X25519 key to wrap its keys to: HTTP 403."""


class ProducerKeys(Protocol):
    """The X25519 public key each source registered (public keys: nothing here is secret)."""

    def get(self, source_id: str) -> bytes | None: ...

    def put(self, source_id: str, public_key: bytes) -> bytes | None:
        """Record the source's key; returns the one it replaces, if any."""
        ...


class SqliteProducerKeys:
    """Producers' X25519 public keys in a small SQLite file beside the serving state."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = ThreadLocalSqlite(self.path)
        self._conn = self._db.conn
        self._tx = self._db.tx
        with self._tx() as tx:
            tx.execute(
                "CREATE TABLE IF NOT EXISTS producer_keys(source_id TEXT PRIMARY KEY, "
                "public_key BLOB NOT NULL, registered_ms INTEGER NOT NULL)"
            )

    def get(self, source_id: str) -> bytes | None:
        row = (
            self._conn()
            .execute("SELECT public_key FROM producer_keys WHERE source_id = ?", (source_id,))
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    def put(self, source_id: str, public_key: bytes) -> bytes | None:
        with self._tx() as tx:
            row = tx.execute(
                "SELECT public_key FROM producer_keys WHERE source_id = ?", (source_id,)
            ).fetchone()
            tx.execute(
                "INSERT OR REPLACE INTO producer_keys(source_id, public_key, registered_ms) VALUES (?, ?, ?)",
                (source_id, public_key, now_ms()),
            )
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self._db.close()


def protected_categories(categories: Sequence[str] | None) -> list[str]:
    """The categories asked for (all protected ones when None); :class:`UnknownCategory` names a wrong one."""
    if categories is None:
        return sorted(PROTECTED_CATEGORIES)
    wrong = sorted({c for c in categories if c not in PROTECTED_CATEGORIES}, key=str)
    if wrong or not categories:
        raise UnknownCategory(
            f"categories {wrong or '[]'}: a key is only given for a protected category, one of "
            f"{sorted(PROTECTED_CATEGORIES)} (public fields are never sealed)"
        )
    return sorted(set(categories))


class KeyService:
    """The platform's side, after authentication: registered wrapping keys and current keys wrapped to them.

    The caller (:mod:`serving.keys`) has checked the EIP-712 signature, its
    nonce and domain, and that the signer is the source's registered, active
    account on the ledger; ``source_id`` here is that authenticated source.
    """

    def __init__(self, ring: KeyRing, producer_keys: ProducerKeys) -> None:
        self.ring = ring
        self.producer_keys = producer_keys

    @property
    def vault(self) -> Any:
        return self.ring.vault

    def register(self, source_id: str, public_key: str | bytes) -> dict[str, Any]:
        """Record ``source_id``'s X25519 public key (64 hex); answers its fingerprint and the one replaced."""
        _source(source_id)
        key = parse_public_key(public_key)
        try:  # a key nothing can be wrapped to (a low-order point) is refused now, not at the first release
            wrap_key(bytes(32), key, "v-" + "0" * 32, "commercial", 0)
        except ValueError:
            raise PccValueError("public_key: not a usable X25519 public key") from None
        replaced = self.producer_keys.put(source_id, key)
        detail = f"wrapping key {fingerprint(key)}" + (
            f" replaces {fingerprint(replaced)}" if replaced is not None and replaced != key else ""
        )
        self.vault.record_audit("key_service_producer_key", actor=f"producer:{source_id}", detail=detail)
        return {
            "source_id": source_id,
            "fingerprint": fingerprint(key),
            "replaced": fingerprint(replaced) if replaced is not None and replaced != key else None,
        }

    def current_keys(
        self, source_id: str, vin: str, categories: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """``{"vehicle", "wrapped_to", "keys": {category: {"epoch", "wrapped"}}}`` for the car of ``vin``."""
        _source(source_id)
        wanted = protected_categories(categories)
        vin = validate_vin(vin)  # its message never echoes the VIN
        wrapping = self.producer_keys.get(source_id)
        if wrapping is None:
            self.vault.record_audit(
                "key_service_refused", actor=f"producer:{source_id}", detail="no registered wrapping key"
            )
            raise NoProducerKey(
                f"source {source_id} has registered no X25519 key to wrap its keys to: "
                f"POST {REGISTER_PATH} first"
            )
        vehicle = self.vault.pseudonymize_vehicle(vin)
        keys: dict[str, dict[str, Any]] = {}
        for category in wanted:
            epoch, key = self.ring.current(vehicle, category)
            keys[category] = {"epoch": epoch, "wrapped": wrap_key(key, wrapping, vehicle, category, epoch)}
        self.vault.record_audit(
            "key_service_release",
            subject=vehicle,
            actor=f"producer:{source_id}",
            detail=", ".join(f"{c}@{k['epoch']}" for c, k in keys.items()) + f" to {fingerprint(wrapping)}",
        )
        return {"vehicle": vehicle, "wrapped_to": fingerprint(wrapping), "keys": keys}


def _source(source_id: str) -> None:
    if not isinstance(source_id, str) or not SOURCE_ID.match(source_id):
        raise PccValueError(f"source_id: {source_id!r} is not a source id")
