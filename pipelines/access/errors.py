"""Errors of the access-control core.

Both name what was refused (vehicle pseudonym, category, key epoch, a field's
JSON path, a grantee key fingerprint), never a VIN, an owner or a field value.
"""

from __future__ import annotations

from pipelines.errors import PccPermissionError, PccValueError


class AccessDenied(PccPermissionError):
    """No valid grant or no key: expired, revoked, wrong signer, erased vehicle (HTTP 403)."""


class TamperedCiphertext(PccValueError):
    """A sealed field or wrapped key does not authenticate: altered, swapped or malformed (HTTP 422)."""
