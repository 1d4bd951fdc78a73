"""Webhook signatures per the Standard Webhooks specification (standardwebhooks.com).

Each delivery carries ``webhook-id`` (the alert's id: the same on every retry,
so a receiver deduplicates on it), ``webhook-timestamp`` (Unix seconds of this
attempt) and ``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256 over
``{id}.{timestamp}.{body}``, keyed with the subscription's secret
(``whsec_`` + base64 of 32 random bytes; the key is the decoded bytes).  A
receiver refuses a timestamp more than 5 minutes away from its clock, so a
captured delivery cannot be replayed later; the specification's own libraries
(``standardwebhooks`` for Python, JavaScript, Go, Java, .NET ...) verify it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

from pipelines.errors import PccPermissionError, PccValueError

SECRET_PREFIX = "whsec_"
TOLERANCE_S = 300


class WebhookVerificationError(PccPermissionError):
    """A delivery whose signature or timestamp does not hold: do not act on it."""


def new_secret() -> str:
    """A fresh subscription secret, ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise PccValueError("secret: expected whsec_ followed by base64") from None
    if len(key) < 24:
        raise PccValueError("secret: at least 24 bytes of key are expected")
    return key


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, id.timestamp.body)>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret_key(secret), signed, hashlib.sha256).digest()).decode()


def sign(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three headers of one delivery attempt."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature(secret, msg_id, ts, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: int | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> str:
    """Check a delivery as a receiver does; returns its ``webhook-id`` or raises
    :class:`WebhookVerificationError` (missing header, stale or future timestamp, no valid signature)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id, ts_text, sigs = (lowered.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not msg_id or not ts_text or not sigs:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        ts = int(ts_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not Unix seconds") from None
    current = int(time.time()) if now is None else now
    if abs(current - ts) > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp {ts} is more than {tolerance_s} s from now")
    expected = signature(secret, msg_id, ts, body)
    # several space-separated signatures may be sent while a secret is rotated
    if not any(hmac.compare_digest(expected, s) for s in sigs.split(" ")):
        raise WebhookVerificationError("no webhook-signature matches this body and secret")
    return msg_id
