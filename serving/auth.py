"""Signed requests: a consumer is an Ethereum account, every request is signed (EIP-191).

The signed text binds the method, the path, the SHA-256 of the body, a nonce
and an expiry, so a request cannot be altered (the body hash changes), forged
(the signature recovers another account) or replayed (the nonce is spent once,
and is remembered in the service's own file until it expires)::

    PCC request v1
    POST /v1/query
    body-sha256: 9f86d0...
    nonce: 3b1f6c2e...
    expires: 1767225600

Headers: ``X-PCC-Account``, ``X-PCC-Nonce``, ``X-PCC-Expires``, ``X-PCC-Signature``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount

from serving.eip191 import SignatureError, Signer, recover
from serving.errors import AuthenticationError
from serving.receipts import ReceiptStore

HEADER_ACCOUNT = "X-PCC-Account"
HEADER_NONCE = "X-PCC-Nonce"
HEADER_EXPIRES = "X-PCC-Expires"
HEADER_SIGNATURE = "X-PCC-Signature"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def request_text(method: str, path: str, body: bytes, nonce: str, expires: int) -> str:
    """The exact text a consumer signs for one request."""
    digest = hashlib.sha256(body).hexdigest()
    return (
        f"PCC request v1\n{method.upper()} {path}\nbody-sha256: {digest}\nnonce: {nonce}\nexpires: {expires}"
    )


def sign_request(
    private_key: str | bytes | LocalAccount | Signer,
    method: str,
    path: str,
    body: bytes,
    ttl_s: int = 60,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers that authenticate one request as the key's account (a key, or a signer loaded once)."""
    if isinstance(private_key, Signer):
        signer = private_key
    else:
        signer = Signer(bytes(private_key.key) if isinstance(private_key, LocalAccount) else private_key)
    nonce = nonce or secrets.token_hex(16)
    expires = int(time.time()) + ttl_s
    signature = signer.sign(request_text(method, path, body, nonce, expires).encode())
    return {
        HEADER_ACCOUNT: signer.address,
        HEADER_NONCE: nonce,
        HEADER_EXPIRES: str(expires),
        HEADER_SIGNATURE: signature,
    }


@dataclass(frozen=True)
class Consumer:
    account: str  # checksummed address
    nonce: str
    expires: int = 0  # unix seconds: the nonce is remembered until then


class Authenticator:
    """Verifies signed requests and spends their nonces."""

    def __init__(self, store: ReceiptStore, max_age_s: int = 300) -> None:
        self.store = store
        self.max_age_s = max_age_s

    def verify(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str], deferred: bool = False
    ) -> Consumer:
        """The consumer who signed this request; its nonce is spent (a second use is refused).

        ``deferred``: the nonce is spent in memory at once and written to the file by the
        caller, with the request's receipt (:meth:`ReceiptStore.issue`) or, if the request
        fails, alone (:meth:`ReceiptStore.record_nonce`) — one SQLite transaction per
        paid query instead of two.
        """

        def header(name: str) -> str:
            value = headers.get(name) or headers.get(name.lower())
            if not value:
                raise AuthenticationError(f"missing header {name}: requests must be signed")
            return value

        account, nonce, expires_text, signature = (
            header(HEADER_ACCOUNT),
            header(HEADER_NONCE),
            header(HEADER_EXPIRES),
            header(HEADER_SIGNATURE),
        )
        if not _ADDRESS.match(account):
            raise AuthenticationError(f"{HEADER_ACCOUNT} is not an Ethereum address")
        if not _NONCE.match(nonce):
            raise AuthenticationError(f"{HEADER_NONCE} must be 8-128 characters of [A-Za-z0-9_-]")
        try:
            expires = int(expires_text)
        except ValueError:
            raise AuthenticationError(f"{HEADER_EXPIRES} must be unix seconds") from None
        now = int(time.time())
        if expires <= now:
            raise AuthenticationError(f"the signed request expired at {expires} (now {now})")
        if expires > now + self.max_age_s:
            raise AuthenticationError(f"{HEADER_EXPIRES} is more than {self.max_age_s} s ahead")
        try:
            signer = recover(request_text(method, path, body, nonce, expires).encode(), signature)
        except SignatureError:
            raise AuthenticationError("the signature is malformed") from None
        if signer.lower() != account.lower():
            raise AuthenticationError("the signature does not match the account, method, path and body")
        if not self.store.spend_nonce(signer, nonce, expires, durable=not deferred):
            raise AuthenticationError(f"nonce {nonce} was already used: replayed request refused")
        return Consumer(signer, nonce, expires)
