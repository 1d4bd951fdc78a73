"""EIP-191 signatures made and recovered with libsecp256k1 (coincurve) directly.

The same bytes as ``eth_account``'s ``sign_message(encode_defunct(...))`` and
``recover_message`` (``tests/unit/serving/test_serving_eip191.py`` checks both ways),
without their per-call key derivations: a signature costs ~20 µs, a recovery
~50 µs, on the request path of every query.  :meth:`Signer.sign_digest` and
:func:`recover_digest` take a digest already made, e.g. the EIP-712 (version
0x01) digest of a signed request (:mod:`serving.eip712`).
"""

from __future__ import annotations

from functools import lru_cache

import coincurve
from eth_hash.auto import keccak
from eth_utils import to_checksum_address

_PREFIX = b"\x19Ethereum Signed Message:\n"
#: secp256k1's group order: a recoverable signature's ``r`` and ``s`` lie in [1, n)
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class SignatureError(ValueError):
    """The bytes are not a recoverable secp256k1 signature."""


def message_hash(message: bytes) -> bytes:
    """Keccak-256 of the EIP-191 (version 0x45) personal message wrapping ``message``."""
    return keccak(_PREFIX + str(len(message)).encode() + message)


class Signer:
    """A private key that signs EIP-191 messages; ``address`` is its checksummed account."""

    def __init__(self, private_key: str | bytes) -> None:
        raw = bytes.fromhex(private_key.removeprefix("0x")) if isinstance(private_key, str) else private_key
        self._key = coincurve.PrivateKey(raw)
        self.address = _address(self._key.public_key.format(compressed=False))

    def sign(self, message: bytes) -> str:
        """The 65-byte signature ``r || s || v`` (v = 27 or 28) as 0x-hex, as ``eth_account`` gives it."""
        return self.sign_digest(message_hash(message))

    def sign_digest(self, digest: bytes) -> str:
        """The signature of a 32-byte digest (e.g. EIP-712's), in the same form as :meth:`sign`."""
        sig = self._key.sign_recoverable(digest, hasher=None)
        return "0x" + sig[:64].hex() + format(sig[64] + 27, "02x")


@lru_cache(maxsize=1024)
def _address(public_key: bytes) -> str:
    return str(to_checksum_address(keccak(public_key[1:])[-20:]))


def recover(message: bytes, signature: str) -> str:
    """The checksummed address that signed ``message`` (EIP-191); :class:`SignatureError` if malformed."""
    return recover_digest(message_hash(message), signature)


def recover_digest(digest: bytes, signature: str) -> str:
    """The checksummed address that signed a 32-byte digest; :class:`SignatureError` if malformed."""
    try:
        raw = bytes.fromhex(signature.removeprefix("0x"))
    except ValueError:
        raise SignatureError("the signature is not hex") from None
    if len(raw) != 65:
        raise SignatureError(f"a signature has 65 bytes, got {len(raw)}")
    v = raw[64] - 27  # 27 or 28, as eth_account requires of a message signature
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big")
    if v not in (0, 1) or not (0 < r < _N and 0 < s < _N):
        raise SignatureError("the signature's r, s or v is out of range")
    try:
        public = coincurve.PublicKey.from_signature_and_message(raw[:64] + bytes([v]), digest, hasher=None)
    except Exception:  # libsecp256k1 refuses a signature no key can have made
        raise SignatureError("no public key recovers from the signature") from None
    return _address(public.format(compressed=False))
