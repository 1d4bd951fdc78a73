"""Hiding commitments of protected fields (event contract version 2).

In a version 2 envelope every protected payload field (category
``owner_identity``, ``precise_location`` or ``commercial``) is replaced in the
hashed part by its commitment::

    commitment = SHA-256(salt || JCS(value))      salt: 16 fresh random bytes per field
    wire form  = "cm:" + hex(commitment)

``JCS`` is RFC 8785 (:func:`pipelines.canonical.canonical_bytes`).  The value
and its salt travel sealed together in the envelope's ``sealed`` member (not
hashed, like ``proof``): the AES-256-GCM plaintext is exactly ``salt ||
JCS(value)``, so whoever opens a field recomputes its commitment by hashing
what it decrypted.  Without the salt a commitment confirms no guess: trying
every candidate value means trying 2^128 salts per candidate.

Pure hashing: no key, no I/O.  Test vectors: ``pipelines/events/vectors/``.
"""

from __future__ import annotations

import re
from hashlib import sha256
from typing import Any

from pipelines.canonical import canonical_bytes
from pipelines.errors import PccValueError

#: The contract version whose envelopes carry commitments (``schema_version``).
COMMITTED_VERSION = 2
SALT_SIZE = 16
COMMITMENT_PREFIX = "cm:"
COMMITMENT = re.compile(r"^cm:[0-9a-f]{64}$")


def commit_bytes(salt: bytes, value: Any) -> bytes:
    """``salt || JCS(value)``: what is committed to, and what is sealed."""
    if len(salt) != SALT_SIZE:
        raise PccValueError(f"commitment salt: need {SALT_SIZE} bytes, got {len(salt)}")
    return bytes(salt) + canonical_bytes(value)


def commitment(salt: bytes, value: Any) -> str:
    """The wire form ``cm:<64 hex>`` of ``SHA-256(salt || JCS(value))``."""
    return COMMITMENT_PREFIX + sha256(commit_bytes(salt, value)).hexdigest()


def commitment_of_plaintext(plaintext: bytes) -> str:
    """The commitment of an opened field's plaintext (``salt || JCS(value)``)."""
    return COMMITMENT_PREFIX + sha256(plaintext).hexdigest()


def is_commitment(value: object) -> bool:
    return isinstance(value, str) and COMMITMENT.match(value) is not None
