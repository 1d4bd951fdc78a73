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

:class:`IdentityVault` is the one door; behind it each job has its module:
:mod:`~pipelines.vault.store` (the file, the secret, the caches an erasure
empties), :mod:`~pipelines.vault.pseudonyms`, :mod:`~pipelines.vault.ownership`,
:mod:`~pipelines.vault.keys` (data keys, owners' signing keys),
:mod:`~pipelines.vault.audit` and :mod:`~pipelines.vault.rights` (access,
erasure, disclosure).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipelines.settings import Settings, VaultSettings
from pipelines.vault.audit import AuditLog
from pipelines.vault.keys import DataKeys, OwnerKeys
from pipelines.vault.ownership import Ownership
from pipelines.vault.pseudonyms import Pseudonyms
from pipelines.vault.rights import SubjectRights
from pipelines.vault.store import ErasableCaches, VaultStore, load_or_create_key

__all__ = ["IdentityVault"]


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
            path = section.path or source.path("vault", "identity.sqlite")
            key = key if key is not None else (section.key_file or source.path("vault", "vault.key"))
        else:
            section = VaultSettings()
            path = Path(source)
            key = key if key is not None else path.parent / "vault.key"
        secret = key if isinstance(key, bytes) else load_or_create_key(Path(key))
        self._store = store = VaultStore(path, secret)
        self.path = path
        caches = ErasableCaches(
            store,
            section.cache_size if cache_size is None else cache_size,
            section.cache_check_s if cache_check_s is None else cache_check_s,
        )
        self._pseudonyms = Pseudonyms(store, caches)
        self._ownership = Ownership(store)
        self._data_keys = DataKeys(store, caches)
        self._owner_keys = OwnerKeys(store)
        self._audit = AuditLog(store)
        roles = frozenset(section.resolve_roles if resolve_roles is None else resolve_roles)
        self._rights = SubjectRights(store, caches, self._pseudonyms, self._audit, roles)

    @property
    def resolve_roles(self) -> frozenset[str]:
        """Caller roles that may turn a vehicle pseudonym back into its VIN."""
        return self._rights.resolve_roles

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> IdentityVault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- pseudonyms -------------------------------------------------------------------------

    def pseudonymize_vehicle(self, vin: str) -> str:
        """The vehicle pseudonym of a VIN (created on first sight): ``v-`` + 32 hex."""
        return self._pseudonyms.vehicle(vin)

    def find_vehicle(self, vin: str) -> str | None:
        """The pseudonym of a VIN the vault already knows, or None (never creates one)."""
        return self._pseudonyms.find_vehicle(vin)

    def pseudonymize_owner(self, identity: Mapping[str, Any]) -> str:
        """The owner pseudonym of ``{"name": ..., "id_number": ...}``: ``o-`` + 32 hex.

        The same person (case, spaces and separators in the id number ignored)
        gets the same pseudonym.  Call :meth:`record_ownership` too, so that an
        erasure of the vehicle finds the owner.
        """
        return self._pseudonyms.owner(identity)

    # --- ownership --------------------------------------------------------------------------

    def record_ownership(self, vehicle: str, owner: str, *, since_ms: int | None = None) -> None:
        """Record that ``owner`` (pseudonym) owns ``vehicle`` (pseudonym) from ``since_ms`` on."""
        self._ownership.record(vehicle, owner, since_ms=since_ms)

    def current_owner(self, vehicle: str) -> str | None:
        """The owner pseudonym recorded last for ``vehicle`` (latest ``since_ms``), or None."""
        return self._ownership.current(vehicle)

    # --- keys -------------------------------------------------------------------------------

    def data_key(self, vehicle: str, category: str, epoch: int = 0, *, cached: bool = False) -> bytes:
        """The 32-byte key for one vehicle's data of one category in one key epoch (created on first use).

        ``cached``: for sealing only (the producer SDK, the speed layer on
        version 1), a key read before may be given from memory; an erasure by
        this object drops it at once, one by another object or process within
        ``vault.cache_check_s`` (as cached pseudonyms).  Releasing a key to a
        grantee never uses the cache.
        """
        return self._data_keys.get(vehicle, category, epoch, cached=cached)

    def owner_public_key(self, owner: str) -> bytes:
        """The raw 32-byte Ed25519 public key of the signing key the vault holds for ``owner``."""
        return self._owner_keys.public_key(owner)

    def sign_as_owner(self, owner: str, message: bytes) -> bytes:
        """Sign ``message`` with the owner's delegated Ed25519 key (the owner never handles it).

        The caller must have authenticated the owner; the key is derived from the
        owner's salt, so erasing the owner makes it unusable.
        """
        return self._owner_keys.sign(owner, message)

    # --- audit ------------------------------------------------------------------------------

    def record_audit(
        self, action: str, *, subject: str | None = None, actor: str | None = None, detail: str | None = None
    ) -> None:
        """Append to the audit log.  ``subject`` must be a pseudonym; never pass a VIN or a name."""
        self._audit.record(action, subject=subject, actor=actor, detail=detail)

    def audit_entries(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest audit entries, newest first."""
        return self._audit.entries(limit)

    # --- the data subject's rights, disclosure ----------------------------------------------

    def export_vehicle(self, vehicle: str) -> dict[str, Any]:
        """Everything the vault holds on one vehicle (GDPR art. 15), keys excepted.

        ``{"vin", "vehicle", "created_ms", "owners": [{"owner", "since_ms", "identity"}],
        "data_keys": {category: [epochs]}}``; the caller must have authenticated the data subject.
        """
        return self._rights.export_vehicle(vehicle)

    def resolve(self, vehicle: str, *, caller: str) -> str:
        """The VIN behind a vehicle pseudonym, for a caller whose role is in ``resolve_roles``."""
        return self._rights.resolve(vehicle, caller=caller)

    def erase(self, vin_or_pseudonym: str, *, actor: str | None = None) -> str:
        """Erase a vehicle (by VIN or pseudonym); returns the pseudonym it had.

        Deletes the VIN, its salt, its data keys, its ownership records and the
        identities of owners linked to no other vehicle, then scrubs the file.
        """
        return self._rights.erase(vin_or_pseudonym, actor=actor)

    def erase_owner(self, identity_or_pseudonym: Mapping[str, Any] | str, *, actor: str | None = None) -> str:
        """Erase one owner's identity (and ownership records); returns the owner pseudonym it had."""
        return self._rights.erase_owner(identity_or_pseudonym, actor=actor)
