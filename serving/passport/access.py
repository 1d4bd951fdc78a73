"""Which vehicle a passport request names: a public pseudonym, or a VIN for its authorised owner.

A pseudonym (``v-`` + 32 hex) is public: anyone may read its passport.  A
VIN is personal data: the request must carry ``Authorization: Bearer
<token>`` where the token belongs to the vehicle's current owner in the
identity vault.  :class:`VaultOwnerAccess` keeps the SHA-256 of each owner's
token (issued out of band), never the token itself, and answers with the
pseudonym so the VIN goes no further than this module.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from pipelines.errors import PccNotFoundError, PccValueError
from pipelines.vault import IdentityVault
from pipelines.vin import validate_vin
from serving.passport.errors import BadVehicleError, OwnerOnlyError

PSEUDONYM = re.compile(r"^v-[0-9a-f]{32}$")


@runtime_checkable
class OwnerAccess(Protocol):
    def vehicle_for(self, vin: str, authorization: str | None) -> str:
        """The pseudonym of ``vin`` if ``authorization`` is its owner's; raises OwnerOnlyError otherwise."""
        ...


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class VaultOwnerAccess:
    """:class:`OwnerAccess` through the identity vault's ownership records.

    ``owner_tokens`` maps ``token_digest(token)`` to the owner pseudonym it authenticates.
    """

    def __init__(self, vault: IdentityVault, owner_tokens: Mapping[str, str]) -> None:
        self._vault = vault
        self._tokens = dict(owner_tokens)

    def _owner_of(self, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise OwnerOnlyError("a VIN passport needs the owner's 'Authorization: Bearer <token>'")
        digest = token_digest(token.strip())
        for known, owner in self._tokens.items():
            if hmac.compare_digest(known, digest):
                return owner
        raise OwnerOnlyError("the bearer token is not an owner's token")

    def vehicle_for(self, vin: str, authorization: str | None) -> str:
        owner = self._owner_of(authorization)
        try:
            vehicle = self._vault.pseudonymize_vehicle(vin)
            current = self._vault.current_owner(vehicle)
        except PccNotFoundError:
            current = None
        if current is None or not hmac.compare_digest(current, owner):
            # same answer for an unknown VIN and someone else's car: nothing to learn by probing
            raise OwnerOnlyError("only the vehicle's current owner may open its passport by VIN")
        return vehicle


def resolve_vehicle(identifier: str, authorization: str | None, owners: OwnerAccess | None) -> str:
    """The pseudonym a passport path names (a pseudonym as is, a VIN through ``owners``)."""
    if PSEUDONYM.match(identifier):
        return identifier
    try:
        vin = validate_vin(identifier.upper())
    except PccValueError:
        raise BadVehicleError(
            "expected a vehicle pseudonym (v- + 32 lower-case hex) or a 17-character VIN"
        ) from None
    if owners is None:
        raise OwnerOnlyError("passports by VIN are not enabled on this service; use the vehicle pseudonym")
    return owners.vehicle_for(vin, authorization)
