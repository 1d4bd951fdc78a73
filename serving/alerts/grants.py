"""Who may subscribe to a vehicle's alerts: the holder of a grant on it.

Grants name a consumer's X25519 public key (``pcc grant keygen``), which is
public.  A subscriber therefore also proves it holds the private half: the
alert service has an X25519 key of its own (``GET /v1/alerts/key``) and the
subscriber sends ``grant_proof`` = HMAC-SHA256 keyed with the X25519 shared
secret of the two keys, over ``pcc-alerts/v1|`` + its lower-case account
address.  Only the two key holders can compute it, and it is bound to the
account that signed the request: a proof seen once cannot subscribe another
account.

**Fleet-wide subscriptions.**  An alert reveals one data category of its car
(:data:`REVEALS`): a fraud kind reveals a fraud flag (``fraud_score``, the
``fraud_scores`` view any paying consumer reads), ``wreck.declared`` a wreck
declaration (``accident``, public: docs/access.md), ``ownership.changed`` that the
car changed hands (``owner_identity``, protected).  Kinds that reveal only public
categories may be subscribed to without a vehicle list (every car's); the
others need the vehicle list and a grant on each.  A kind not listed is protected.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pipelines.access import GrantStore, parse_public_key
from pipelines.access.wrap import ConsumerKeyPair, fingerprint
from pipelines.alerts import ALERT_KINDS, kind_matches
from pipelines.errors import PccValueError
from pipelines.events.categories import PUBLIC_CATEGORIES
from serving.alerts.errors import GrantKeyRefused, NotGranted

_LABEL = b"pcc-alerts/v1|"

#: the data category each alert kind reveals about its car
REVEALS: dict[str, str] = {
    "fraud.clocking": "fraud_score",
    "fraud.clone": "fraud_score",
    "fraud.implausible_rate": "fraud_score",
    "fraud.impossible_travel": "fraud_score",
    "fraud.rollback": "fraud_score",
    "fraud.wreck_resurrection": "fraud_score",
    "wreck.declared": "accident",
    "ownership.changed": "owner_identity",
}
#: what any paying consumer reads: the public payload categories and the fraud scores view
_PUBLIC = PUBLIC_CATEGORIES | {"fraud_score"}


def public_kind(kind: str) -> bool:
    """True if alerts of ``kind`` reveal only public information (fleet-wide subscriptions allowed)."""
    return REVEALS.get(kind) in _PUBLIC


def protected_kinds(patterns: Sequence[str]) -> list[str]:
    """The alert kinds ``patterns`` match that are not public (fleet-wide subscriptions refused)."""
    return [k for k in ALERT_KINDS if any(kind_matches(p, k) for p in patterns) and not public_kind(k)]


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def grant_proof(consumer: ConsumerKeyPair, service_key: str, account: str) -> str:
    """What a subscriber sends as ``grant_proof`` (64 hex)."""
    shared = consumer.private_key.exchange(X25519PublicKey.from_public_bytes(parse_public_key(service_key)))
    return hmac.new(shared, _LABEL + account.lower().encode(), hashlib.sha256).hexdigest()


class ServiceKey:
    """The alert service's X25519 key, kept in a file of its state directory (created once, 0600)."""

    def __init__(self, path: Path) -> None:
        if path.exists():
            self._key = X25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._key = X25519PrivateKey.generate()
            from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

            raw = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(raw.hex())
        self.public_hex = _public_bytes(self._key).hex()

    def check_proof(self, grant_key: str, proof: str, account: str) -> bytes:
        """The grant key, if ``proof`` shows ``account`` holds its private half; else 403."""
        try:
            public = parse_public_key(grant_key)
        except PccValueError as exc:
            raise GrantKeyRefused(f"grant_key: {exc.message}") from None
        shared = self._key.exchange(X25519PublicKey.from_public_bytes(public))
        expected = hmac.new(shared, _LABEL + account.lower().encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, proof.lower()):
            raise GrantKeyRefused(
                f"grant_proof does not show that account {account} holds consumer key {fingerprint(public)} "
                "(compute it with that key and GET /v1/alerts/key)"
            )
        return public


def check_granted(
    grants: GrantStore, grantee: bytes, vehicles: Sequence[str], now_s: int | None = None
) -> None:
    """Refuse (403) the first vehicle ``grantee`` holds no current grant on, by its position in the list."""
    now = int(time.time()) if now_s is None else now_s
    held = {g.vehicle for g in grants.grants(grantee=grantee) if g.expiry_s == 0 or g.expiry_s > now}
    for position, vehicle in enumerate(vehicles, start=1):
        if vehicle not in held:
            raise NotGranted(
                position,
                f"vehicle {position} of the list: no current grant to consumer key {fingerprint(grantee)}",
            )
