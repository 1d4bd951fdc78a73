"""The service's own EIP-191 code gives exactly what eth_account gives, both ways."""

from __future__ import annotations

import secrets

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from serving.eip191 import SignatureError, Signer, recover


@pytest.mark.parametrize(
    "message", [b"", b"PCC request v1\nPOST /v1/query", "ünïcode €".encode(), b"x" * 5000]
)
def test_signatures_match_eth_account_both_ways(message: bytes) -> None:
    key = "0x" + secrets.token_hex(32)
    ours = Signer(key)
    theirs = Account.from_key(key)
    assert ours.address == theirs.address
    signed = theirs.sign_message(encode_defunct(primitive=message)).signature.hex()
    theirs_hex = signed if signed.startswith("0x") else "0x" + signed
    assert ours.sign(message) == theirs_hex  # RFC 6979: deterministic, so byte for byte
    assert recover(message, theirs_hex) == theirs.address
    assert (
        Account.recover_message(encode_defunct(primitive=message), signature=ours.sign(message))
        == ours.address
    )


def test_an_altered_message_recovers_another_account() -> None:
    signer = Signer("0x" + "22" * 32)
    assert recover(b"amount: 101", signer.sign(b"amount: 100")) != signer.address


@pytest.mark.parametrize(
    "signature",
    ["0x1234", "not hex at all", "0x" + "00" * 65, "0x" + "ff" * 64 + "1b", "0x" + "11" * 64 + "01"],
)
def test_malformed_signatures_are_refused_as_eth_account_refuses_them(signature: str) -> None:
    with pytest.raises(SignatureError):
        recover(b"hello", signature)
    with pytest.raises(Exception):  # noqa: B017 - eth_account raises several kinds
        Account.recover_message(encode_defunct(primitive=b"hello"), signature=signature)
