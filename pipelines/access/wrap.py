"""Consumer key pairs and wrapped data keys (HPKE, RFC 9180).

A consumer (insurer, dealer, fleet) holds an X25519 key pair; its raw 32-byte
public key is what a grant names (and what ``AccessRegistry`` stores as
``consumerKey``).  A data key is *wrapped* to that public key with HPKE base
mode, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM, from the
``cryptography`` library; the HPKE ``info`` binds vehicle, category and epoch,
so a wrapped key cannot be replayed as the key of another vehicle or epoch.

Wire form: ``wk:v1:<base64url(enc(32) | ciphertext(32+16))>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from pipelines.errors import PccConfigError, PccValueError

from .errors import AccessDenied, TamperedCiphertext
from .fields import KEY_SIZE, Cipher, cipher_of

WRAP_PREFIX = "wk:v1:"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def fingerprint(public_key: bytes) -> str:
    """A short, stable name for a consumer key in logs and errors: 16 hex of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def parse_public_key(value: bytes | str) -> bytes:
    """A raw 32-byte X25519 public key from bytes or 64 lower-case hex digits."""
    if isinstance(value, str):
        if not _HEX64.match(value):
            raise PccValueError("consumer public key: expected 64 lower-case hex digits (X25519)")
        value = bytes.fromhex(value)
    if len(value) != 32 or value == bytes(32):
        raise PccValueError("consumer public key: expected 32 non-zero bytes (X25519)")
    return bytes(value)


class ConsumerKeyPair:
    """A consumer's X25519 key pair; the private half never leaves the consumer."""

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> ConsumerKeyPair:
        return cls(X25519PrivateKey.generate())

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the private key as hex to a new file of mode 0600 (refuses to overwrite)."""
        target = Path(path)
        raw = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise PccValueError(f"consumer key file {target} exists; not overwriting it") from None
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(raw.hex() + "\n")
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConsumerKeyPair:
        source = Path(path)
        try:
            text = source.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise PccConfigError(f"consumer key file {source} does not exist") from None
        if not _HEX64.match(text):
            raise PccConfigError(f"consumer key file {source}: expected 64 lower-case hex digits")
        return cls(X25519PrivateKey.from_private_bytes(bytes.fromhex(text)))


def _info(vehicle: str, category: str, epoch: int) -> bytes:
    return b"pcc-wrap-v1\x00%s\x00%s\x00%d" % (vehicle.encode(), category.encode(), epoch)


def wrap_key(data_key: bytes, grantee: bytes, vehicle: str, category: str, epoch: int) -> str:
    """``data_key`` encrypted to the grantee's X25519 public key, bound to (vehicle, category, epoch)."""
    if len(data_key) != KEY_SIZE:
        raise PccValueError("data key: expected 32 bytes")
    public = X25519PublicKey.from_public_bytes(parse_public_key(grantee))
    sealed = _SUITE.encrypt(data_key, public, info=_info(vehicle, category, epoch))
    return WRAP_PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def unwrap_key(wrapped: str, keys: ConsumerKeyPair, vehicle: str, category: str, epoch: int) -> bytes:
    """The data key inside ``wrapped``; raises :class:`TamperedCiphertext` if it is not for us or altered."""
    if not isinstance(wrapped, str) or not wrapped.startswith(WRAP_PREFIX):
        raise TamperedCiphertext("wrapped key: not a wk:v1 token")
    text = wrapped[len(WRAP_PREFIX) :]
    try:
        blob = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        key = _SUITE.decrypt(blob, keys.private_key, info=_info(vehicle, category, epoch))
    except (InvalidTag, binascii.Error, ValueError):
        raise TamperedCiphertext(
            f"wrapped key for {vehicle} {category} epoch {epoch} does not open with key "
            f"{keys.fingerprint} (altered, or wrapped for another key, vehicle or epoch)"
        ) from None
    if len(key) != KEY_SIZE:
        raise TamperedCiphertext("wrapped key: does not hold a 32-byte data key")
    return key


#: The consumer side: the service hands out the same wrapping of a key for a while
#: (``KeyRing.wrap_cache_s``), so a client's repeated queries open it once.
_unwrap_again = lru_cache(maxsize=1024)(unwrap_key)


class GranteeKeys:
    """The consumer side: unwrapped data keys of one vehicle, usable as ``open_payload``'s key_lookup."""

    def __init__(self, keys: ConsumerKeyPair, vehicle: str) -> None:
        self.keys = keys
        self.vehicle = vehicle
        self._data: dict[tuple[str, int], bytes] = {}
        self._ciphers: dict[tuple[str, int], Cipher] = {}

    def add(self, category: str, epoch: int, wrapped: str) -> None:
        key = _unwrap_again(wrapped, self.keys, self.vehicle, category, epoch)
        self._data[(category, epoch)] = key
        self._ciphers[(category, epoch)] = cipher_of(category, epoch, key)

    def add_all(self, wrapped: Mapping[str, Mapping[int, str]]) -> None:
        """Add ``{category: {epoch: wrapped}}`` as the serving layer returns it."""
        for category, by_epoch in wrapped.items():
            for epoch, token in by_epoch.items():
                self.add(category, int(epoch), token)

    def has(self, category: str, epoch: int) -> bool:
        """Whether the key of this category and epoch was received."""
        return (category, epoch) in self._data

    @property
    def ciphers(self) -> Mapping[tuple[str, int], Cipher]:
        """``{(category, epoch): cipher}`` of the received keys, one AES-GCM object each:
        :func:`~pipelines.access.fields.open_held`'s ``ciphers``."""
        return self._ciphers

    def __call__(self, category: str, epoch: int) -> bytes:
        key = self._data.get((category, epoch))
        if key is None:
            raise AccessDenied(
                f"no key for {self.vehicle} {category} epoch {epoch}: not granted to this consumer"
            )
        return key
