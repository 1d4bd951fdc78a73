"""GDPR erasure (art. 17) and right of access (art. 15) over every store that holds a vehicle's data.

Crypto-shredding: protected fields are sealed in every view under keys that
live only in the identity vault, so erasing the vault entry (VIN, salt, owner
identities, data keys) makes them unreadable everywhere at once - the master
dataset included, which is never rewritten.  Anchored leaf hashes and inclusion
proofs stay valid: they commit to the events, they do not reveal them.

Each store that keeps something beyond sealed rows (grants, key caches,
serving caches, anything decrypted) implements :class:`ErasableStore`; a store
of sealed rows implements it to check that nothing in it escaped sealing.
:func:`erase_vehicle` runs every store first and erases the vault last, so a
store that fails leaves the vault intact and the same request can be repeated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from pipelines.errors import PccError, PccNotFoundError, PccStateError
from pipelines.events.envelope import VEHICLE_PSEUDONYM
from pipelines.vault import IdentityVault

from .errors import AccessDenied
from .fields import open_payload, row_aad


class ErasableStore(Protocol):
    """A place holding a vehicle's data that must forget it on erasure."""

    name: str

    def erase_vehicle(self, vehicle: str) -> int:
        """Forget (or prove unreadable) everything about ``vehicle``; returns how many items it touched.

        Raise a :class:`PccError` if the data cannot be erased (the vault is then left as it is).
        """
        ...


class SubjectReader(Protocol):
    """A place the data subject's events can be read from (master dataset, views)."""

    name: str

    def rows_for(self, vehicle: str) -> Iterable[Mapping[str, Any]]:
        """Rows with at least ``event_id``, ``event_type``, ``schema_version``, ``payload`` (sealed)."""
        ...


@dataclass
class ErasureReport:
    """What an erasure did: the pseudonym the vehicle had and the items each store forgot."""

    vehicle: str
    stores: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"vehicle": self.vehicle, "stores": dict(self.stores)}


def _known_vehicle(vault: IdentityVault, vin_or_vehicle: str, action: str, actor: str) -> str:
    target = vin_or_vehicle.strip() if isinstance(vin_or_vehicle, str) else vin_or_vehicle
    vehicle: str | None
    if isinstance(target, str) and VEHICLE_PSEUDONYM.match(target):
        try:
            vault.current_owner(target)
            vehicle = target
        except PccNotFoundError:
            vehicle = None
    else:
        vehicle = vault.find_vehicle(target)  # a malformed VIN raises PccValueError naming the problem
    if vehicle is None:
        vault.record_audit(f"{action}_refused", actor=actor, detail="unknown vehicle")
        raise PccNotFoundError("no such vehicle in the identity vault (already erased or never seen)")
    return vehicle


def erase_vehicle(
    vin_or_vehicle: str, vault: IdentityVault, stores: Sequence[ErasableStore], *, actor: str = "gdpr"
) -> ErasureReport:
    """Erase a vehicle everywhere: each store, then the vault (VIN, owners, data keys).

    An unknown VIN raises :class:`PccNotFoundError`; a store that fails raises
    :class:`PccStateError` naming it, before the vault is touched.
    """
    vehicle = _known_vehicle(vault, vin_or_vehicle, "erase", actor)
    report = ErasureReport(vehicle)
    for store in stores:
        try:
            report.stores[store.name] = int(store.erase_vehicle(vehicle))
        except (PccError, OSError) as exc:
            vault.record_audit(
                "erase_incomplete", subject=vehicle, actor=actor, detail=f"{store.name}: {exc}"
            )
            raise PccStateError(
                f"erasure of {vehicle} stopped at store {store.name!r}: {exc}; "
                "the vault is untouched, fix the store and run the erasure again"
            ) from None
    vault.erase(vehicle, actor=actor)
    vault.record_audit(
        "erase_stores",
        subject=vehicle,
        actor=actor,
        detail=" ".join(f"{name}={n}" for name, n in report.stores.items()) or "no stores",
    )
    return report


def export_subject(
    vin_or_vehicle: str, vault: IdentityVault, readers: Sequence[SubjectReader], *, actor: str = "gdpr"
) -> dict[str, Any]:
    """Everything held about a vehicle, protected fields opened with the vault's keys.

    ``{"subject": <vault record: VIN, owners with identities, key epochs>,
    "events": [{...row, "payload": <plaintext>, "store": name}]}``; a row that
    does not open carries ``"unreadable": reason`` instead of its payload.  The
    caller must have authenticated the data subject (the owner).
    """
    vehicle = _known_vehicle(vault, vin_or_vehicle, "export", actor)
    record = vault.export_vehicle(vehicle)
    epochs = {c: set(es) for c, es in record["data_keys"].items()}

    def lookup(category: str, epoch: int) -> bytes:
        if epoch not in epochs.get(category, ()):
            raise AccessDenied(f"no data key for {vehicle} {category} epoch {epoch}")
        return vault.data_key(vehicle, category, epoch)

    events: list[dict[str, Any]] = []
    for reader in readers:
        for row in reader.rows_for(vehicle):
            out = {k: v for k, v in row.items() if k != "payload"}
            out["store"] = reader.name
            payload = row["payload"]
            try:
                sealed = orjson.loads(payload) if isinstance(payload, str | bytes) else payload
                out["payload"] = open_payload(
                    str(row["event_type"]),
                    int(row["schema_version"]),
                    sealed,
                    lookup,
                    row_aad(vehicle, str(row["event_id"])),
                )
            except (PccError, ValueError) as exc:
                out["unreadable"] = str(exc)
            events.append(out)
    vault.record_audit("export", subject=vehicle, actor=actor, detail=f"events={len(events)}")
    return {"subject": record, "events": events}
