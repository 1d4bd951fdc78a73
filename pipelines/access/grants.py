"""Grants: who may read which protected category of which vehicle, and handing out wrapped keys.

A grant is signed (Ed25519) by its grantor: the vehicle's *current owner*,
through the delegated key the identity vault holds for each owner
(:meth:`IdentityVault.sign_as_owner`), or a *producer* whose public key the
platform knows (from the SourceRegistry).  :data:`DEFAULT_GRANTORS` says which
of the two may grant each protected category.  The signed message names the
current key epoch, so a grant or revocation cannot be replayed after the next
rotation.

Revoking a grant starts a new key epoch for that (vehicle, category): data
sealed afterwards needs a key the revoked consumer never receives.  An
ownership change revokes every grant the previous owner made and rotates every
protected category (the new owner's grantees do not read the old owner's
data, nor the reverse).

:meth:`AccessService.wrapped_keys` is what the serving layer calls for an
authenticated consumer: it checks the grant (present, not expired, made by an
owner who still owns the car, epoch not before the grant) and returns the data
keys wrapped to the consumer's public key; the consumer decrypts on its side.
Every grant, revocation, key release and refusal goes to the vault's audit log
(pseudonyms, categories, epochs and key fingerprints only).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pipelines.canonical import canonical_bytes
from pipelines.errors import PccError, PccNotFoundError, PccValueError
from pipelines.events.categories import PROTECTED_CATEGORIES
from pipelines.events.envelope import OWNER_PSEUDONYM, SOURCE_ID
from pipelines.vault import IdentityVault

from .errors import AccessDenied
from .keys import KeyRing
from .store import Grant, GrantStore
from .wrap import fingerprint, parse_public_key

GrantorKind = Literal["owner", "producer"]
_OWNER_IN_TEXT = re.compile(r"o-[0-9a-f]{32}")

#: Who may grant each protected category.  Identity and location are the
#: owner's alone; commercial details are also the producer's (a garage's prices).
DEFAULT_GRANTORS: Mapping[str, frozenset[str]] = {
    "owner_identity": frozenset({"owner"}),
    "precise_location": frozenset({"owner"}),
    "commercial": frozenset({"owner", "producer"}),
}


def grant_message(
    grantee: bytes, vehicle: str, category: str, expiry_s: int, epoch: int, grantor: str
) -> bytes:
    """The bytes a grantor signs to grant (RFC 8785 JSON)."""
    return canonical_bytes(
        {
            "pcc": "grant/v1",
            "grantee": grantee.hex(),
            "vehicle": vehicle,
            "category": category,
            "expiry_s": expiry_s,
            "epoch": epoch,
            "grantor": grantor,
        }
    )


def revoke_message(grantee: bytes, vehicle: str, category: str, epoch: int, grantor: str) -> bytes:
    """The bytes a grantor signs to revoke (RFC 8785 JSON)."""
    return canonical_bytes(
        {
            "pcc": "revoke/v1",
            "grantee": grantee.hex(),
            "vehicle": vehicle,
            "category": category,
            "epoch": epoch,
            "grantor": grantor,
        }
    )


def owner_grantor(owner: str) -> str:
    return f"owner:{owner}"


def producer_grantor(source_id: str) -> str:
    return f"producer:{source_id}"


class AccessService:
    """Grants, revocations, ownership changes and key release over a vault and a grant store.

    ``producers`` maps a source id to its raw Ed25519 public key.  ``clock``
    gives Unix seconds (grant expiries are Unix seconds, as on the ledger).
    """

    def __init__(
        self,
        vault: IdentityVault,
        store: GrantStore,
        *,
        producers: Mapping[str, bytes] | None = None,
        grantors: Mapping[str, frozenset[str]] = DEFAULT_GRANTORS,
        clock: Callable[[], float] = time.time,
        key_cache_s: float = 0.0,
    ) -> None:
        self.vault = vault
        self.store = store
        self.producers = dict(producers or {})
        self.grantors = grantors
        self.clock = clock
        self.keys = KeyRing(vault, store, cache_s=key_cache_s)

    # --- checks ---------------------------------------------------------------------------

    def _audit(self, action: str, vehicle: str, actor: str | None, detail: str) -> None:
        # an owner is logged as the role only: its pseudonym is a protected (owner_identity) value
        if actor is not None and actor.startswith("owner:"):
            actor = "owner"
        self.vault.record_audit(action, subject=vehicle, actor=actor, detail=detail)

    def _refuse(self, action: str, vehicle: str, actor: str | None, error: PccError) -> PccError:
        self._audit(action + "_refused", vehicle, actor, _OWNER_IN_TEXT.sub("o-…", error.message))
        return error

    def _check_category(self, category: str) -> None:
        if category not in PROTECTED_CATEGORIES:
            raise PccValueError(
                f"category {category!r} is not protected (protected: {sorted(PROTECTED_CATEGORIES)}); "
                "public categories need no grant"
            )

    def _current_owner(self, vehicle: str) -> str | None:
        try:
            return self.vault.current_owner(vehicle)
        except PccNotFoundError:
            raise PccNotFoundError(f"unknown vehicle pseudonym {vehicle} (erased or never seen)") from None

    def _signer_key(self, vehicle: str, category: str, grantor: str) -> bytes:
        kind, _, who = grantor.partition(":")
        if kind not in ("owner", "producer"):
            raise PccValueError(f"grantor {grantor!r}: expected owner:<o-pseudonym> or producer:<source_id>")
        if kind not in self.grantors.get(category, frozenset()):
            allowed = " or ".join(sorted(self.grantors.get(category, frozenset()))) or "nobody"
            raise AccessDenied(f"a {kind} may not grant {category} (only the {allowed})")
        if kind == "owner":
            if not OWNER_PSEUDONYM.match(who):
                raise PccValueError(f"grantor {grantor!r}: not an owner pseudonym")
            current = self._current_owner(vehicle)
            if who != current:
                raise AccessDenied(f"grantor {grantor} is not the current owner of {vehicle}")
            return self.vault.owner_public_key(who)
        if not SOURCE_ID.match(who) or who not in self.producers:
            raise AccessDenied(f"grantor {grantor} is not a known producer")
        return self.producers[who]

    def _check_signature(
        self, action: str, vehicle: str, category: str, grantor: str, message: bytes, signature: bytes
    ) -> None:
        try:
            self._check_category(category)
            public = self._signer_key(vehicle, category, grantor)
            try:
                Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
            except (InvalidSignature, ValueError):
                raise AccessDenied(f"the {action} signature of {grantor} does not verify") from None
        except PccError as exc:
            raise self._refuse(action, vehicle, grantor, exc) from None

    # --- grant and revoke -----------------------------------------------------------------

    def grant(
        self, grantee: bytes | str, vehicle: str, category: str, expiry_s: int, grantor: str, signature: bytes
    ) -> Grant:
        """Record a grant signed by ``grantor`` over :func:`grant_message` at the current epoch."""
        grantee = parse_public_key(grantee)
        if type(expiry_s) is not int or expiry_s <= self.clock():
            raise self._refuse(
                "grant", vehicle, grantor, PccValueError(f"grant expiry {expiry_s} is not in the future")
            )
        epoch = self.store.epoch(vehicle, category)
        message = grant_message(grantee, vehicle, category, expiry_s, epoch, grantor)
        self._check_signature("grant", vehicle, category, grantor, message, signature)
        stored = self.store.put(Grant(grantee, vehicle, category, expiry_s, epoch, grantor, signature))
        self.keys.key(vehicle, category, stored.epoch)  # the key exists before anything is wrapped
        self._audit(
            "grant",
            vehicle,
            grantor,
            f"category={category} epoch={stored.epoch} grantee={fingerprint(grantee)} expiry_s={expiry_s}",
        )
        return stored

    def _owner_or_refuse(self, action: str, vehicle: str) -> str:
        owner = self._current_owner(vehicle)
        if owner is None:
            raise self._refuse(action, vehicle, "owner", AccessDenied(f"{vehicle} has no recorded owner"))
        return owner

    def grant_as_owner(self, grantee: bytes | str, vehicle: str, category: str, expiry_s: int) -> Grant:
        """Grant on behalf of the current owner (already authenticated by the caller), signed by the vault."""
        grantee = parse_public_key(grantee)
        grantor = owner_grantor(self._owner_or_refuse("grant", vehicle))
        message = grant_message(
            grantee, vehicle, category, expiry_s, self.store.epoch(vehicle, category), grantor
        )
        return self.grant(
            grantee, vehicle, category, expiry_s, grantor, self.vault.sign_as_owner(grantor[6:], message)
        )

    def revoke(
        self, grantee: bytes | str, vehicle: str, category: str, grantor: str, signature: bytes
    ) -> int:
        """Revoke a grant (signed over :func:`revoke_message`); returns the new key epoch."""
        grantee = parse_public_key(grantee)
        epoch = self.store.epoch(vehicle, category)
        message = revoke_message(grantee, vehicle, category, epoch, grantor)
        self._check_signature("revoke", vehicle, category, grantor, message, signature)
        return self._revoke(grantee, vehicle, category, grantor)

    def _revoke(self, grantee: bytes, vehicle: str, category: str, actor: str) -> int:
        try:
            new_epoch = self.store.revoke(vehicle, category, grantee)
        except PccNotFoundError as exc:
            raise self._refuse("revoke", vehicle, actor, exc) from None
        self.keys.invalidate(vehicle, category)
        self.keys.key(vehicle, category, new_epoch)
        self._audit(
            "revoke",
            vehicle,
            actor,
            f"category={category} grantee={fingerprint(grantee)} new_epoch={new_epoch}",
        )
        return new_epoch

    def revoke_as_owner(self, grantee: bytes | str, vehicle: str, category: str) -> int:
        """Revoke on behalf of the current owner (already authenticated by the caller)."""
        grantee = parse_public_key(grantee)
        grantor = owner_grantor(self._owner_or_refuse("revoke", vehicle))
        message = revoke_message(grantee, vehicle, category, self.store.epoch(vehicle, category), grantor)
        return self.revoke(
            grantee, vehicle, category, grantor, self.vault.sign_as_owner(grantor[6:], message)
        )

    def ownership_changed(self, vehicle: str) -> list[Grant]:
        """Revoke every grant made by an owner other than the current one, rotate every protected category.

        Call after ``IdentityVault.record_ownership`` (the producer SDK does on
        ``ownership_change``).  Returns the grants revoked.
        """
        current = self._current_owner(vehicle)
        keep = None if current is None else owner_grantor(current)
        revoked = [
            g
            for g in self.store.grants(vehicle=vehicle)
            if g.grantor.startswith("owner:") and g.grantor != keep
        ]
        rotated: set[str] = set()
        for g in revoked:
            self._revoke(g.grantee, vehicle, g.category, "ownership_change")
            rotated.add(g.category)
        if unrotated := sorted(PROTECTED_CATEGORIES - rotated):
            self.keys.rotate_many(vehicle, unrotated)
        self._audit("ownership_change", vehicle, "ownership_change", f"grants revoked: {len(revoked)}")
        return revoked

    def grants(self, *, vehicle: str | None = None, grantee: bytes | str | None = None) -> list[Grant]:
        return self.store.grants(
            vehicle=vehicle, grantee=None if grantee is None else parse_public_key(grantee)
        )

    # --- key release ----------------------------------------------------------------------

    def _check_grant(self, grantee: bytes, vehicle: str, category: str, epoch: int) -> None:
        actor = fingerprint(grantee)
        self._check_category(category)
        grant = self.store.get(vehicle, category, grantee)
        if grant is None:
            raise AccessDenied(
                f"consumer key {actor} holds no grant of {category} of {vehicle} (never granted or revoked)"
            )
        if grant.expiry_s <= self.clock():
            raise AccessDenied(
                f"the grant of {category} of {vehicle} to consumer key {actor} expired at {grant.expiry_s}"
            )
        if grant.grantor.startswith("owner:") and grant.grantor != owner_grantor(
            self._current_owner(vehicle) or ""
        ):
            self.ownership_changed(vehicle)
            raise AccessDenied(f"the grant of {category} of {vehicle} was made by a previous owner")
        current = self.store.epoch(vehicle, category)
        if type(epoch) is not int or epoch > current:
            raise PccValueError(f"epoch {epoch} of {vehicle} {category}: current epoch is {current}")
        if epoch < grant.epoch:
            raise AccessDenied(
                f"{category} of {vehicle} epoch {epoch} was sealed before the grant (epoch {grant.epoch})"
            )

    def wrapped_keys(
        self, grantee: bytes | str, vehicle: str, needed: Iterable[tuple[str, int]], *, strict: bool = True
    ) -> dict[str, dict[int, str]]:
        """``{category: {epoch: wrapped key}}`` for the authenticated consumer ``grantee``.

        With ``strict`` any refused (category, epoch) refuses the whole request
        (nothing is wrapped); otherwise refused ones are left out (and logged).
        """
        grantee = parse_public_key(grantee)
        allowed: list[tuple[str, int]] = []
        for category, epoch in sorted(set(needed)):
            try:
                self._check_grant(grantee, vehicle, category, epoch)
            except PccError as exc:
                refused = self._refuse("key_release", vehicle, fingerprint(grantee), exc)
                if strict:
                    raise refused from None
                continue
            allowed.append((category, epoch))
        out: dict[str, dict[int, str]] = {}
        for (
            category,
            epoch,
        ) in allowed:  # the grant was checked above, the key is read now: see KeyRing.wrapped
            key = self.keys.key(vehicle, category, epoch)
            out.setdefault(category, {})[epoch] = self.keys.wrapped(grantee, vehicle, category, epoch, key)
        if allowed:
            self._audit(
                "key_release", vehicle, fingerprint(grantee), " ".join(f"{c}@{e}" for c, e in allowed)
            )
        return out
