"""How platform identifiers become on-chain keys, and amounts become integers.

Every identifier is ``keccak256(utf-8 text)`` as ``bytes32``: a source id
(``cc-aurora``), a vehicle pseudonym (``v-`` + 32 hex), a data category
(``mileage``), an off-chain payment reference.  The chain never sees the text of
a pseudonym, only its hash.
"""

from __future__ import annotations

import re

from eth_account import Account
from eth_utils import keccak

from pipelines.errors import PccValueError

SOURCE_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
VEHICLE = re.compile(r"v-[0-9a-f]{32}")
SOURCE_KINDS = ("connected_car", "garage", "insurer", "inspection_centre", "manual_entry")


def source_key(source_id: str) -> bytes:
    """The SourceRegistry/AnchorRegistry key of ``source_id``."""
    if not SOURCE_ID.fullmatch(source_id):
        raise PccValueError(f"source id {source_id!r} must match [a-z0-9][a-z0-9-]{{1,62}}")
    return keccak(text=source_id)


def vehicle_key(pseudonym: str) -> bytes:
    if not VEHICLE.fullmatch(pseudonym):
        raise PccValueError(f"vehicle pseudonym {pseudonym!r} must be 'v-' followed by 32 hex digits")
    return keccak(text=pseudonym)


def category_key(category: str) -> bytes:
    if not category:
        raise PccValueError("data category must not be empty")
    return keccak(text=category)


def payment_ref(reference: str) -> bytes:
    """The bytes32 of an off-chain payment reference (bank transfer id...)."""
    if not reference:
        raise PccValueError("payment reference must not be empty")
    return keccak(text=reference)


def source_kind(kind: str) -> int:
    try:
        return SOURCE_KINDS.index(kind)
    except ValueError:
        raise PccValueError(
            f"source kind {kind!r} is unknown: expected one of {', '.join(SOURCE_KINDS)}"
        ) from None


def cents(amount: int) -> int:
    """Check a token amount: an ``int`` number of cents, never a float."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise PccValueError(f"token amounts are int cents, got {type(amount).__name__} {amount!r}")
    if amount < 0:
        raise PccValueError(f"token amount must not be negative, got {amount}")
    return amount


def dev_source_key(deployer_key: str, source_id: str) -> str:
    """A deterministic signing key for a source on a development chain (derived, never stored)."""
    seed = keccak(bytes.fromhex(deployer_key.removeprefix("0x")) + source_key(source_id))
    return "0x" + seed.hex()


def address_of(private_key: str) -> str:
    return str(Account.from_key(private_key).address)
