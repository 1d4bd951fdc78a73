"""What data subjects may ask of the vault (GDPR art. 15 access, art. 17 erasure) and who may see
through a pseudonym."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.errors import PccNotFoundError, PccPermissionError
from pipelines.events.envelope import VEHICLE_PSEUDONYM
from pipelines.vault.audit import AuditLog
from pipelines.vault.keys import DataKeys
from pipelines.vault.ownership import Ownership
from pipelines.vault.pseudonyms import Pseudonyms
from pipelines.vault.store import ErasableCaches, VaultStore
from pipelines.vin import validate_vin


class SubjectRights:
    def __init__(
        self,
        store: VaultStore,
        caches: ErasableCaches,
        pseudonyms: Pseudonyms,
        audit: AuditLog,
        resolve_roles: frozenset[str],
    ) -> None:
        self._store = store
        self._caches = caches
        self._pseudonyms = pseudonyms
        self._audit = audit
        self.resolve_roles = resolve_roles

    def export_vehicle(self, vehicle: str) -> dict[str, Any]:
        """Everything held on one vehicle, keys excepted (see :meth:`IdentityVault.export_vehicle`)."""
        conn = self._store.conn()
        row = conn.execute(
            "SELECT id, vin, created_ms FROM vehicles WHERE pseudonym = ?", (vehicle,)
        ).fetchone()
        if row is None:
            raise PccNotFoundError(f"unknown vehicle pseudonym {vehicle}")
        return {
            "vin": str(row[1]),
            "vehicle": vehicle,
            "created_ms": int(row[2]),
            "owners": Ownership.history(conn, int(row[0])),
            "data_keys": DataKeys.epochs(conn, int(row[0])),
        }

    def resolve(self, vehicle: str, *, caller: str) -> str:
        """The VIN behind a vehicle pseudonym, for a caller whose role is in :attr:`resolve_roles`."""
        if caller not in self.resolve_roles:
            self._audit.record("resolve_denied", subject=vehicle, actor=caller)
            allowed = ", ".join(sorted(self.resolve_roles)) or "none"
            raise PccPermissionError(
                f"role {caller!r} may not resolve vehicle pseudonyms (allowed: {allowed})"
            )
        row = self._store.conn().execute("SELECT vin FROM vehicles WHERE pseudonym = ?", (vehicle,)).fetchone()
        if row is None:
            raise PccNotFoundError(f"unknown vehicle pseudonym {vehicle}")
        self._audit.record("resolve", subject=vehicle, actor=caller)
        return str(row[0])

    def erase(self, vin_or_pseudonym: str, *, actor: str | None = None) -> str:
        """Erase a vehicle and the owners linked to no other; returns the pseudonym it had."""
        key = vin_or_pseudonym.strip()
        with self._store.tx() as tx:
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
            AuditLog.append(tx, "erase", subject=pseudonym, actor=actor, detail=f"owners erased: {erased_owners}")
        self._caches.clear()
        self._store.scrub()
        return pseudonym

    def erase_owner(self, identity_or_pseudonym: Mapping[str, Any] | str, *, actor: str | None = None) -> str:
        """Erase one owner's identity (and ownership records); returns the owner pseudonym it had."""
        with self._store.tx() as tx:
            if isinstance(identity_or_pseudonym, str):
                row = tx.execute(
                    "SELECT id, pseudonym FROM owners WHERE pseudonym = ?", (identity_or_pseudonym,)
                ).fetchone()
            else:
                lookup = self._pseudonyms.owner_lookup(identity_or_pseudonym)
                row = tx.execute("SELECT id, pseudonym FROM owners WHERE lookup = ?", (lookup,)).fetchone()
            if row is None:
                raise PccNotFoundError("no such owner in the identity vault (already erased or never seen)")
            tx.execute("DELETE FROM owners WHERE id = ?", (row[0],))  # ownership rows cascade
            AuditLog.append(tx, "erase_owner", subject=str(row[1]), actor=actor)
        self._store.scrub()
        return str(row[1])
