"""Signed requests: a consumer is an Ethereum account, every request is signed (EIP-712).

The signature is over EIP-712 typed data that binds the request to one
deployment and one service: the domain names the chain and the Marketplace
contract consumers pay through, the message the service's public host, the
method, the path, the SHA-256 of the body, a nonce and an expiry.  So a request
cannot be altered (the body hash changes), forged (the signature recovers
another account), replayed (the nonce is spent once, and remembered in the
service's own file until it expires) or used on another deployment (another
chain id, Marketplace or host gives another digest)::

    domain  EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)
            {"name": "PCC", "version": "1", "chainId": 31337, "verifyingContract": <Marketplace>}
    message Request(string method,string host,string path,bytes32 bodyHash,string nonce,uint256 expires)
            {"method": "POST", "host": "api.pcc.example", "path": "/v1/query",
             "bodyHash": 0x<sha256 of the body>, "nonce": "3b1f6c2e...", "expires": 1767225600}

Without a deployment (offline billing) the domain is the local one: the chain id
of ``serving.local_chain_id`` and the zero address.  ``GET /v1/domain`` gives
the domain, the host and the types (:meth:`RequestDomain.document`).

Headers: ``X-PCC-Account``, ``X-PCC-Nonce``, ``X-PCC-Expires``, ``X-PCC-Signature``,
and optionally ``X-PCC-Domain`` (``chainId/verifyingContract/host`` as signed),
which lets a service of another deployment say which part differs.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from pipelines.errors import PccConfigError
from serving.config import ServingConfig
from serving.eip191 import SignatureError, Signer, recover_digest
from serving.eip712 import DOMAIN_TYPE, Eip712Domain, StructType, digest
from serving.errors import AuthenticationError
from serving.market.receipts import ReceiptStore

HEADER_ACCOUNT = "X-PCC-Account"
HEADER_NONCE = "X-PCC-Nonce"
HEADER_EXPIRES = "X-PCC-Expires"
HEADER_SIGNATURE = "X-PCC-Signature"
HEADER_DOMAIN = "X-PCC-Domain"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HOST = re.compile(r"^[a-z0-9.\-\[\]:]+$")

#: the EIP-712 domain's name and version: a new version is a new kind of signed request
NAME = "PCC"
VERSION = "1"
ZERO_ADDRESS = "0x" + "00" * 20
#: the local domain's chain id (anvil's) when ``serving.local_chain_id`` is not set
LOCAL_CHAIN_ID = 31337
LOCAL_HOST = "127.0.0.1:8600"
REQUEST_TYPE = StructType(
    "Request",
    (
        ("method", "string"),
        ("host", "string"),
        ("path", "string"),
        ("bodyHash", "bytes32"),
        ("nonce", "string"),
        ("expires", "uint256"),
    ),
)

if TYPE_CHECKING:
    from starlette.requests import Request


def public_host(text: str) -> str:
    """The host a request is signed for: ``host[:port]``, lowercase, from a host or a URL."""
    host = (urlsplit(text).netloc if "://" in text else text).strip().rstrip("/").lower()
    if not host or not _HOST.match(host):
        raise ValueError(f"{text!r} is not a host[:port] or an http(s) URL")
    return host


@dataclass(frozen=True)
class RequestDomain:
    """What a signed request is bound to: a deployment (chain id, Marketplace) and a service's host."""

    chain_id: int
    verifying_contract: str  # the Marketplace contract; the zero address without a deployment
    host: str  # the service's public host[:port]

    def __post_init__(self) -> None:
        if not _ADDRESS.match(self.verifying_contract):
            raise ValueError(f"verifying contract {self.verifying_contract!r} is not an address")
        object.__setattr__(self, "verifying_contract", to_checksum_address(self.verifying_contract))
        object.__setattr__(self, "host", public_host(self.host))

    @classmethod
    def local(cls, chain_id: int = LOCAL_CHAIN_ID, host: str = LOCAL_HOST) -> RequestDomain:
        """The domain of a service without a deployment (offline billing): the zero address."""
        return cls(chain_id, ZERO_ADDRESS, host)

    @cached_property
    def eip712(self) -> Eip712Domain:
        return Eip712Domain(NAME, VERSION, self.chain_id, self.verifying_contract)

    @property
    def label(self) -> str:
        """``chainId/verifyingContract/host``, the value of the ``X-PCC-Domain`` header."""
        return f"{self.chain_id}/{self.verifying_contract}/{self.host}"

    def describe(self) -> str:
        return f"chain id {self.chain_id}, verifying contract {self.verifying_contract}, host {self.host}"

    def document(self, max_request_age_s: int | None = None) -> dict[str, Any]:
        """What ``GET /v1/domain`` answers: everything a client needs to sign a request."""
        doc: dict[str, Any] = {
            "domain": self.eip712.as_json(),
            "primaryType": REQUEST_TYPE.name,
            "types": {DOMAIN_TYPE.name: DOMAIN_TYPE.as_json(), REQUEST_TYPE.name: REQUEST_TYPE.as_json()},
            "host": self.host,
            "headers": {
                "account": HEADER_ACCOUNT,
                "nonce": HEADER_NONCE,
                "expires": HEADER_EXPIRES,
                "signature": HEADER_SIGNATURE,
                "domain": HEADER_DOMAIN,
            },
        }
        if max_request_age_s is not None:
            doc["max_request_age_s"] = max_request_age_s
        return doc

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> RequestDomain:
        """The domain a service published (:meth:`document`); refused if it signs another kind of request."""
        try:
            domain, types = doc["domain"], doc["types"]
            if (domain["name"], domain["version"]) != (NAME, VERSION) or types.get(
                REQUEST_TYPE.name
            ) != REQUEST_TYPE.as_json():
                raise AuthenticationError(
                    f"the service signs requests as {domain['name']!r} version {domain['version']!r} "
                    f"with other fields; this client signs {NAME!r} version {VERSION!r}: upgrade the client"
                )
            return cls(int(domain["chainId"]), str(domain["verifyingContract"]), str(doc["host"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise AuthenticationError(f"the service's signing domain is malformed: {exc}") from None


def request_digest(
    domain: RequestDomain, method: str, path: str, body: bytes, nonce: str, expires: int
) -> bytes:
    """The 32-byte EIP-712 digest a consumer signs for one request."""
    struct = REQUEST_TYPE.hash(
        {
            "method": method.upper(),
            "host": domain.host,
            "path": path,
            "bodyHash": hashlib.sha256(body).digest(),
            "nonce": nonce,
            "expires": expires,
        }
    )
    return digest(domain.eip712, struct)


def typed_request(
    domain: RequestDomain, method: str, path: str, body: bytes, nonce: str, expires: int
) -> dict[str, Any]:
    """One request's full EIP-712 typed data, as a wallet's ``eth_signTypedData_v4`` takes it."""
    doc = domain.document()
    return {
        "types": doc["types"],
        "primaryType": doc["primaryType"],
        "domain": doc["domain"],
        "message": {
            "method": method.upper(),
            "host": domain.host,
            "path": path,
            "bodyHash": "0x" + hashlib.sha256(body).hexdigest(),
            "nonce": nonce,
            "expires": expires,
        },
    }


def sign_request(
    private_key: str | bytes | LocalAccount | Signer,
    method: str,
    path: str,
    body: bytes,
    ttl_s: int = 60,
    nonce: str | None = None,
    domain: RequestDomain | None = None,
) -> dict[str, str]:
    """Headers that authenticate one request as the key's account (a key, or a signer loaded once).

    ``domain``: the service's (``GET /v1/domain``); None signs for the local domain
    of a service on default settings without a deployment (:meth:`RequestDomain.local`).
    """
    if isinstance(private_key, Signer):
        signer = private_key
    else:
        signer = Signer(bytes(private_key.key) if isinstance(private_key, LocalAccount) else private_key)
    domain = domain or _LOCAL
    nonce = nonce or secrets.token_hex(16)
    expires = int(time.time()) + ttl_s
    signature = signer.sign_digest(request_digest(domain, method, path, body, nonce, expires))
    return {
        HEADER_ACCOUNT: signer.address,
        HEADER_NONCE: nonce,
        HEADER_EXPIRES: str(expires),
        HEADER_SIGNATURE: signature,
        HEADER_DOMAIN: domain.label,
    }


_LOCAL = RequestDomain.local()


def service_domain(config: ServingConfig, billing: object) -> RequestDomain:
    """The domain of a service billed through ``billing``.

    On a chain, the ledger deployment's chain id (checked against the node when the
    billing's ledger client was made) and Marketplace address; without one (offline
    billing), the local domain of ``config.local_chain_id``.  The host is
    ``config.request_host`` either way.
    """
    try:
        host = public_host(config.request_host)
    except ValueError as exc:
        raise PccConfigError(f"serving.public_host: {exc}") from None
    deployment = getattr(getattr(billing, "client", None), "deployment", None)
    if deployment is not None:
        return RequestDomain(int(deployment.chain_id), str(deployment.address("Marketplace")), host)
    return RequestDomain.local(config.local_chain_id, host)


@dataclass(frozen=True)
class Consumer:
    account: str  # checksummed address
    nonce: str
    expires: int = 0  # unix seconds: the nonce is remembered until then


def signed_target(request: Request) -> str:
    """What a signature covers of a request's URL: the path, and the query as sent."""
    url = request.url
    return url.path + (f"?{url.query}" if url.query else "")


class Authenticator:
    """Verifies signed requests and spends their nonces."""

    def __init__(
        self, store: ReceiptStore, max_age_s: int = 300, domain: RequestDomain | None = None
    ) -> None:
        """``domain``: this service's (:func:`service_domain`); None is the local one."""
        self.store = store
        self.max_age_s = max_age_s
        self.domain = domain or _LOCAL
        self._label = self.domain.label.lower()

    def document(self) -> dict[str, Any]:
        """``GET /v1/domain``: the EIP-712 domain, host and types requests are signed with."""
        return self.domain.document(self.max_age_s)

    async def verify_request(self, request: Request) -> tuple[bytes, Consumer]:
        """A web request's body and signer (:meth:`verify`, off the event loop: it touches SQLite)."""
        from starlette.concurrency import run_in_threadpool

        body = await request.body()
        consumer = await run_in_threadpool(
            self.verify, request.method, signed_target(request), body, request.headers
        )
        return body, consumer

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
        claimed = headers.get(HEADER_DOMAIN) or headers.get(HEADER_DOMAIN.lower())
        if claimed and claimed.lower() != self._label:
            raise AuthenticationError(self._other_deployment(claimed))
        try:
            signer = recover_digest(
                request_digest(self.domain, method, path, body, nonce, expires), signature
            )
        except SignatureError:
            raise AuthenticationError("the signature is malformed") from None
        if signer.lower() != account.lower():
            raise AuthenticationError(
                "the signature does not match the account, method, path and body signed for this "
                f"service's EIP-712 domain ({self.domain.describe()}; see GET /v1/domain)"
            )
        if not self.store.spend_nonce(signer, nonce, expires, durable=not deferred):
            raise AuthenticationError(f"nonce {nonce} was already used: replayed request refused")
        return Consumer(signer, nonce, expires)

    def _other_deployment(self, claimed: str) -> str:
        """Why a request whose ``X-PCC-Domain`` is not this service's is refused, part by part."""
        parts = claimed.split("/", 2)
        if len(parts) != 3:
            return f"{HEADER_DOMAIN} must be chainId/verifyingContract/host, as signed"
        ours = self.domain
        theirs = dict(zip(("chain id", "verifying contract", "host"), parts, strict=True))
        mine = {
            "chain id": str(ours.chain_id),
            "verifying contract": ours.verifying_contract,
            "host": ours.host,
        }
        differ = [
            f"{k} {theirs[k]} (this service: {mine[k]})" for k in mine if theirs[k].lower() != mine[k].lower()
        ]
        return (
            "the request was signed for another deployment: "
            + "; ".join(differ)
            + " - sign for the domain of GET /v1/domain"
        )
