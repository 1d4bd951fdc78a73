"""EIP-712 signed requests: the service's own hashing gives what eth_account gives, both ways,
and a request signed for another deployment is refused naming what differs."""

from __future__ import annotations

import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.errors import PccConfigError
from serving.auth import (
    HEADER_DOMAIN,
    ZERO_ADDRESS,
    Authenticator,
    RequestDomain,
    public_host,
    request_digest,
    service_domain,
    sign_request,
    typed_request,
)
from serving.config import ServingConfig
from serving.eip191 import Signer, recover_digest
from serving.eip712 import Eip712Domain, StructType, TypedDataError, digest
from serving.errors import AuthenticationError
from serving.market.receipts import ReceiptStore

KEY = "0x" + "33" * 32
MARKET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DOMAIN = RequestDomain(31337, MARKET, "api.pcc.example")


def _theirs(typed: dict[str, Any]) -> bytes:
    return bytes(_hash_eip191_message(encode_typed_data(full_message=typed)))


def _hex(signature: bytes) -> str:
    text = signature.hex()
    return text if text.startswith("0x") else "0x" + text


hosts = st.from_regex(r"\A[a-z0-9.-]{1,40}(:[0-9]{1,5})?\Z")
addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
nonces = st.from_regex(r"\A[A-Za-z0-9_-]{8,40}\Z")


@settings(max_examples=60, deadline=None)
@given(
    chain_id=st.integers(0, 2**256 - 1),
    contract=addresses,
    host=hosts,
    method=st.sampled_from(["GET", "POST", "delete"]),
    path=st.text(max_size=60),
    body=st.binary(max_size=200),
    nonce=nonces,
    expires=st.integers(0, 2**256 - 1),
)
def test_request_digest_is_eth_accounts(
    chain_id: int, contract: str, host: str, method: str, path: str, body: bytes, nonce: str, expires: int
) -> None:
    domain = RequestDomain(chain_id, contract, host)
    ours = request_digest(domain, method, path, body, nonce, expires)
    assert ours == _theirs(typed_request(domain, method, path, body, nonce, expires))


def test_signatures_match_eth_account_both_ways() -> None:
    key = "0x" + secrets.token_hex(32)
    account = Account.from_key(key)
    body = b'{"sql": "SELECT count(*) FROM vehicle_history"}'
    headers = sign_request(key, "POST", "/v1/query", body, domain=DOMAIN, nonce="n-0123456789")
    expires = int(headers["X-PCC-Expires"])
    typed = typed_request(DOMAIN, "POST", "/v1/query", body, "n-0123456789", expires)
    theirs = _hex(Account.sign_typed_data(key, full_message=typed).signature)
    assert headers["X-PCC-Signature"] == theirs  # RFC 6979: deterministic, so byte for byte
    assert headers["X-PCC-Account"] == account.address
    assert headers[HEADER_DOMAIN] == f"31337/{MARKET}/api.pcc.example"
    digest_ = request_digest(DOMAIN, "POST", "/v1/query", body, "n-0123456789", expires)
    assert recover_digest(digest_, theirs) == account.address
    signable = encode_typed_data(full_message=typed)
    assert Account.recover_message(signable, signature=headers["X-PCC-Signature"]) == account.address


def test_the_domain_separator_is_eth_accounts_for_the_separate_form() -> None:
    """eth_account's three-argument form (domain, types, message) gives the same digest."""
    typed = typed_request(DOMAIN, "GET", "/v1/receipts?limit=5", b"", "abcdefgh", 1_767_225_600)
    types = {k: v for k, v in typed["types"].items() if k != "EIP712Domain"}
    signable = encode_typed_data(typed["domain"], types, typed["message"])
    assert bytes(_hash_eip191_message(signable)) == request_digest(
        DOMAIN, "GET", "/v1/receipts?limit=5", b"", "abcdefgh", 1_767_225_600
    )


def test_struct_types_refuse_values_that_do_not_fit() -> None:
    kind = StructType("T", (("a", "uint8"), ("b", "address"), ("c", "bytes32"), ("d", "string")))
    good = {"a": 255, "b": MARKET, "c": bytes(32), "d": "x"}
    kind.hash(good)
    for field, bad in [("a", 256), ("a", -1), ("a", True), ("b", "0x12"), ("c", b"short"), ("d", b"x")]:
        with pytest.raises(TypedDataError, match=field):
            kind.hash({**good, field: bad})
    with pytest.raises(TypedDataError, match="missing"):
        kind.hash({"a": 1})
    with pytest.raises(TypedDataError, match="not supported"):
        StructType("U", (("x", "int256"),)).hash({"x": 1})
    separator = Eip712Domain("PCC", "1", 1, MARKET).separator
    assert len(digest(Eip712Domain("PCC", "1", 1, MARKET), kind.hash(good))) == len(separator) == 32


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("api.pcc.example", "api.pcc.example"),
        ("https://API.pcc.example/", "api.pcc.example"),
        ("http://127.0.0.1:8600", "127.0.0.1:8600"),
        ("[::1]:8600", "[::1]:8600"),
    ],
)
def test_public_host_is_normalised(text: str, host: str) -> None:
    assert public_host(text) == host


@pytest.mark.parametrize("text", ["", "api.pcc.example/v1", "https://", "a host"])
def test_a_host_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        public_host(text)


@pytest.fixture
def store(tmp_path: Path) -> ReceiptStore:
    return ReceiptStore(tmp_path / "receipts.sqlite", "0x" + "44" * 32)


def test_a_request_signed_for_this_deployment_is_accepted(store: ReceiptStore) -> None:
    auth = Authenticator(store, 300, DOMAIN)
    headers = sign_request(KEY, "POST", "/v1/query", b"{}", domain=DOMAIN)
    assert auth.verify("POST", "/v1/query", b"{}", headers).account == Signer(KEY).address
    lowercase = {k.lower(): v for k, v in sign_request(KEY, "GET", "/p", b"", domain=DOMAIN).items()}
    assert auth.verify("GET", "/p", b"", lowercase).account == Signer(KEY).address  # as ASGI gives them


@pytest.mark.parametrize(
    ("other", "named"),
    [
        (RequestDomain(1, MARKET, "api.pcc.example"), "chain id 1 (this service: 31337)"),
        (
            RequestDomain(31337, "0x" + "ab" * 20, "api.pcc.example"),
            f"verifying contract 0x{'ab' * 20} (this service: {MARKET})".lower(),
        ),
        (RequestDomain(31337, MARKET, "staging.pcc.example"), "host staging.pcc.example"),
    ],
)
def test_a_request_signed_for_another_deployment_is_refused_naming_it(
    store: ReceiptStore, other: RequestDomain, named: str
) -> None:
    auth = Authenticator(store, 300, DOMAIN)
    headers = sign_request(KEY, "POST", "/v1/query", b"{}", domain=other)
    with pytest.raises(AuthenticationError, match="another deployment") as info:
        auth.verify("POST", "/v1/query", b"{}", headers)
    assert named in info.value.message.lower()
    # without the header that names the domain, the signature itself is refused
    del headers[HEADER_DOMAIN]
    with pytest.raises(AuthenticationError, match=r"does not match .* EIP-712 domain .*chain id 31337"):
        auth.verify("POST", "/v1/query", b"{}", headers)
    # and a header lying about the domain does not help: the digest is this service's
    headers[HEADER_DOMAIN] = DOMAIN.label
    with pytest.raises(AuthenticationError, match="does not match"):
        auth.verify("POST", "/v1/query", b"{}", headers)


def test_a_malformed_domain_header_is_refused(store: ReceiptStore) -> None:
    headers = sign_request(KEY, "POST", "/v1/query", b"{}", domain=DOMAIN)
    headers[HEADER_DOMAIN] = "31337"
    with pytest.raises(AuthenticationError, match="chainId/verifyingContract/host"):
        Authenticator(store, 300, DOMAIN).verify("POST", "/v1/query", b"{}", headers)


def test_the_service_domain_is_the_deployments_or_the_local_one(tmp_path: Path) -> None:
    config = ServingConfig(data_dir=tmp_path, port=9000, public_host="https://Api.PCC.example")
    deployment = SimpleNamespace(chain_id=8453, address=lambda name: {"Marketplace": MARKET}[name])
    chain_billing = SimpleNamespace(client=SimpleNamespace(deployment=deployment))
    assert service_domain(config, chain_billing) == RequestDomain(8453, MARKET, "api.pcc.example")
    offline = service_domain(ServingConfig(data_dir=tmp_path, port=9000, local_chain_id=7), object())
    assert offline == RequestDomain(7, ZERO_ADDRESS, "127.0.0.1:9000")
    with pytest.raises(PccConfigError, match=r"serving\.public_host"):
        service_domain(ServingConfig(data_dir=tmp_path, public_host="a/b"), object())


def test_the_published_document_round_trips_and_refuses_another_kind() -> None:
    doc = DOMAIN.document(300)
    assert doc["domain"] == {"name": "PCC", "version": "1", "chainId": 31337, "verifyingContract": MARKET}
    assert doc["host"] == "api.pcc.example" and doc["max_request_age_s"] == 300
    assert RequestDomain.from_document(doc) == DOMAIN
    with pytest.raises(AuthenticationError, match="upgrade the client"):
        RequestDomain.from_document({**doc, "domain": {**doc["domain"], "version": "2"}})
    with pytest.raises(AuthenticationError, match="malformed"):
        RequestDomain.from_document({"domain": {}})
