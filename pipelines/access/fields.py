"""Sealing protected payload fields: authenticated encryption per vehicle, category and key epoch.

Each field whose schema category (``x-pcc-category``) is not public is replaced
by a self-describing token::

    enc:v1:<category>:<epoch>:<base64(nonce(12) | AES-256-GCM ciphertext+tag)>
    enc:v2:<category>:<epoch>:<commitment hex>:<base64(nonce(12) | AES-256-GCM ciphertext+tag)>

Version 1 tokens are sealed by the speed layer from a clear envelope; version 2
tokens by the producer SDK (:mod:`.sealing`), and their plaintext is ``salt(16)
|| JCS(value)`` whose SHA-256 is the commitment the hashed envelope carries
(:mod:`pipelines.events.commitments`).  Opening a version 2 token checks that
hash: a value that does not match its commitment is :class:`TamperedCiphertext`.

The plaintext is the compact JSON of the field's value (objects such as
``location`` are sealed whole); opening gives back exactly the value the
producer hashed, so re-canonicalizing the opened envelope gives its leaf hash.  The AAD binds the row (``row_aad(vehicle, event_id)``), the
field's JSON path, the category and the epoch: a token moved to another row or
field, or relabelled, does not authenticate.

Opening is all or nothing: a missing key raises :class:`AccessDenied`, a
tampered or malformed token :class:`TamperedCiphertext`, and no partially
opened payload is returned.  Sealed payloads no longer match their JSON Schema
(a sealed ``cost_cents`` is a string): validate before sealing.
"""

from __future__ import annotations

import binascii
import os
import re
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from hashlib import sha256
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipelines.canonical import canonical_bytes
from pipelines.errors import PccValueError
from pipelines.events.categories import CATEGORIES, PUBLIC_CATEGORIES, json_path_join
from pipelines.events.registry import load_schema

from .errors import AccessDenied, TamperedCiphertext

TOKEN_PREFIX = "enc:v1:"
TOKEN_PREFIX_V2 = "enc:v2:"
_TOKEN_PREFIXES = (TOKEN_PREFIX, TOKEN_PREFIX_V2)
#: groups: category, epoch, commitment (version 2 only), blob; the version is the token's 6th character
_TOKEN = re.compile(
    r"^enc:v(?:1(?!:[a-z_]{1,32}:[0-9]{1,10}:[0-9a-f]{64}:)|2(?=:[a-z_]{1,32}:[0-9]{1,10}:[0-9a-f]{64}:)):"
    r"([a-z_]{1,32}):(0|[1-9][0-9]{0,9}):"
    r"(?:([0-9a-f]{64}):)?([A-Za-z0-9+/]{38,}={0,2})$"
)
_NONCE = 12
_SALT = 16
KEY_SIZE = 32

#: ``key_for(category) -> (epoch, 32-byte key)``: the current key, used when sealing.
KeyFor = Callable[[str], tuple[int, bytes]]
#: ``key_lookup(category, epoch) -> 32-byte key``: raises :class:`AccessDenied` when not allowed.
KeyLookup = Callable[[str, int], bytes]


@dataclass(frozen=True, slots=True)
class SealedField:
    """A payload member that is sealed whole: its keys from the payload root, JSON path and category."""

    keys: tuple[str, ...]
    path: str
    category: str


def _walk(schema: Mapping[str, Any], keys: tuple[str, ...], path: str, out: list[SealedField]) -> None:
    for name, sub in schema.get("properties", {}).items():
        sub_keys, sub_path = (*keys, name), json_path_join(path, name)
        category = sub.get("x-pcc-category")
        if category is not None and category not in PUBLIC_CATEGORIES:  # fail closed on new categories
            out.append(SealedField(sub_keys, sub_path, category))
        else:
            _walk(sub, sub_keys, sub_path, out)


@cache
def sealed_fields(event_type: str, version: int = 1) -> tuple[SealedField, ...]:
    """The members of this payload schema that are sealed (outermost protected members)."""
    out: list[SealedField] = []
    _walk(load_schema(event_type, version), (), "$.payload", out)
    return tuple(out)


#: One sealed field as the hot loops use it: the field, whether it is nested, its member name,
#: its category, and the middle of its AAD (``\x00 path \x00 category \x00``, the epoch follows).
_Slot = tuple[SealedField, bool, str, str, bytes]


@cache
def _plan(event_type: str, version: int) -> tuple[tuple[_Slot, ...], bool]:
    """:func:`sealed_fields` precompiled once per (event type, version), and whether one is nested."""
    slots = tuple(
        (
            f,
            len(f.keys) > 1,
            f.keys[-1],
            f.category,
            b"\x00%s\x00%s\x00" % (f.path.encode(), f.category.encode()),
        )
        for f in sealed_fields(event_type, version)
    )
    slots = tuple(sorted(slots, key=lambda slot: slot[3]))  # one category's fields in a row
    return slots, any(slot[1] for slot in slots)


def sealed_categories(event_type: str, version: int = 1) -> frozenset[str]:
    """The protected categories present in this payload schema."""
    return frozenset(f.category for f in sealed_fields(event_type, version))


def row_aad(vehicle: str, event_id: str) -> bytes:
    """The row part of every field's associated data: vehicle pseudonym and event id."""
    return f"pcc-field-v1\x00{vehicle}\x00{event_id}".encode()


class _NoncePool(threading.local):
    """Random bytes from ``os.urandom`` drawn in blocks: one system call per ~340 nonces, not one each.

    Per thread (never shared), every byte handed out once, and dropped in a
    forked child (which must not reuse its parent's bytes).
    """

    def __init__(self) -> None:
        self.buf, self.pos = b"", 0


_POOL_BYTES = 4096
_pool = _NoncePool()


def _reset_pool() -> None:
    global _pool
    _pool = _NoncePool()


os.register_at_fork(after_in_child=_reset_pool)


def _fresh(n: int) -> bytes:
    """``n`` fresh random bytes (the nonces of one event)."""
    pool = _pool
    start = pool.pos
    end = start + n
    if end > len(pool.buf):
        pool.buf, start, end = os.urandom(max(_POOL_BYTES, n)), 0, n
    pool.pos = end
    return pool.buf[start:end]


#: What sealing and opening need per (category, epoch, key): the cipher, the token prefix
#: ``enc:v1:<category>:<epoch>:`` and the epoch as it ends the AAD.
Cipher = tuple[AESGCM, str, bytes]


@lru_cache(maxsize=4096, typed=True)
def _cipher(category: str, epoch: int, key: bytes) -> Cipher:
    if type(epoch) is not int:
        raise PccValueError(f"key for {category}: the epoch must be an integer")
    return cipher_of(category, epoch, bytes(key))


def forget_ciphers() -> None:
    """Drop the cipher objects cached per key (on erasure: they hold key material)."""
    _cipher.cache_clear()


def is_token(value: object) -> bool:
    """Whether ``value`` looks like a sealed-field token (version 1 or 2)."""
    return isinstance(value, str) and value.startswith(_TOKEN_PREFIXES)


def token_info(token: str) -> tuple[str, int]:
    """``(category, epoch)`` of a sealed-field token; a malformed token raises :class:`TamperedCiphertext`."""
    category, epoch, _ = _parse(token)
    return category, epoch


def _parse(token: str) -> tuple[str, int, str]:
    """``(category, epoch, base64 blob)`` of a token; a malformed one raises :class:`TamperedCiphertext`."""
    match = _TOKEN.match(token) if isinstance(token, str) else None
    if match is None:
        raise TamperedCiphertext("sealed field: not an enc:v1 or enc:v2 token")
    category, epoch, _, blob = match.groups()
    return category, int(epoch), blob


def token_commitment(token: str) -> str | None:
    """The commitment ``cm:<hex>`` a version 2 token carries (None for version 1)."""
    match = _TOKEN.match(token) if isinstance(token, str) else None
    if match is None:
        raise TamperedCiphertext("sealed field: not an enc:v1 or enc:v2 token")
    return None if match[3] is None else "cm:" + match[3]


def _locate(payload: Mapping[str, Any], keys: tuple[str, ...]) -> Mapping[str, Any] | None:
    """The object holding the last key, or None when an intermediate member is absent."""
    node: Any = payload
    for key in keys[:-1]:
        node = node.get(key) if isinstance(node, Mapping) else None
        if node is None:
            return None
    return node if isinstance(node, Mapping) else None


def _copy_path(out: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Copy the objects along ``keys[:-1]`` in ``out`` (so the input is never mutated); the parent."""
    node = out
    for key in keys[:-1]:
        child = dict(node[key])
        node[key] = child
        node = child
    return node


def _strict_bytes(value: Any, field: SealedField) -> bytes:
    """What orjson cannot write exactly (NaN, infinities, huge ints...): canonical JSON, or a clear error."""
    try:
        return canonical_bytes(value)
    except PccValueError as exc:
        raise PccValueError(f"{field.path}: {exc}") from None


def _present(plan: tuple[tuple[_Slot, ...], bool], payload: Mapping[str, Any]) -> list[_Slot]:
    """The planned fields present in ``payload``."""
    slots, nested = plan
    if not nested:
        return [slot for slot in slots if slot[2] in payload]
    return [
        slot
        for slot in slots
        if (slot[2] in payload if not slot[1] else slot[2] in (_locate(payload, slot[0].keys) or ()))
    ]


def seal_payload(
    event_type: str, version: int, payload: Mapping[str, Any], key_for: KeyFor, aad: bytes
) -> dict[str, Any]:
    """A copy of ``payload`` with every protected field replaced by its token.

    ``key_for`` is called once per protected category present; ``aad`` is
    :func:`row_aad` of the event.  Fields that are absent stay absent.
    """
    out = dict(payload)
    slots = _plan(event_type, version)[0]
    nonces, at = b"", 0
    sealing = ""  # the plan keeps one category's fields together: one key_for call each
    aead: AESGCM
    prefix = ""
    tail = b""
    for field, nested, name, category, aad_mid in slots:
        if not nested:
            if name not in out:
                continue
            parent = out
        else:
            holder = _locate(out, field.keys)
            if holder is None or name not in holder:
                continue
            parent = _copy_path(out, field.keys)
        if not nonces:  # a fresh random 96-bit nonce per field, drawn once per event
            nonces = _fresh(_NONCE * len(slots))
        if category != sealing:
            sealing = category
            aead, prefix, tail = _current_cipher(category, key_for)
        value = parent[name]
        try:
            plain: bytes | None = orjson.dumps(value)
        except TypeError:  # orjson.JSONEncodeError
            plain = None
        if plain is None or b"null" in plain:  # orjson writes NaN and infinities as null
            plain = _strict_bytes(value, field)
        nonce = nonces[at : at + _NONCE]
        at += _NONCE
        sealed = nonce + aead.encrypt(nonce, plain, aad + aad_mid + tail)
        parent[name] = prefix + binascii.b2a_base64(sealed, newline=False).decode("ascii")
    return out


def _current_cipher(category: str, key_for: KeyFor) -> Cipher:
    epoch, key = key_for(category)
    try:
        return _cipher(category, epoch, key)  # typed: an epoch that is not an int is its own entry
    except TypeError:  # an unhashable key (bytearray, memoryview)
        return _cipher(category, epoch, bytes(key))


def _tokens(event_type: str, version: int, payload: Mapping[str, Any]) -> list[tuple[_Slot, str]]:
    out = []
    for slot in _present(_plan(event_type, version), payload):
        holder = _locate(payload, slot[0].keys) if slot[1] else payload
        value = holder[slot[2]]  # type: ignore[index]
        if not isinstance(value, str) or not value.startswith(_TOKEN_PREFIXES):
            raise TamperedCiphertext(f"{slot[0].path}: expected a sealed field, found a plain value")
        out.append((slot, value))
    return out


def iter_tokens(
    event_type: str, version: int, payload: Mapping[str, Any]
) -> Iterator[tuple[SealedField, str]]:
    """Each present sealed field and its token; a plaintext value where a token belongs is refused."""
    for slot, token in _tokens(event_type, version, payload):
        yield slot[0], token


def needed_keys(event_type: str, version: int, payload: Mapping[str, Any]) -> set[tuple[str, int]]:
    """The ``(category, epoch)`` pairs whose keys are needed to open this sealed payload."""
    out = set()
    for _, token in _tokens(event_type, version, payload):
        match = _TOKEN.match(token)
        if match is None:
            raise TamperedCiphertext("sealed field: not an enc:v1 or enc:v2 token")
        out.add((match[1], int(match[2])))
    return out


def cipher_of(category: str, epoch: int, key: bytes) -> Cipher:
    """The AES-GCM object (and token prefix, AAD tail) of one data key: made once, used for many rows."""
    if type(epoch) is not int or epoch < 0 or len(key) != KEY_SIZE:
        raise PccValueError(f"key for {category}: need a 32-byte key and an epoch >= 0")
    return AESGCM(bytes(key)), f"{TOKEN_PREFIX}{category}:{epoch}:", b"%d" % epoch


def open_held(
    event_type: str,
    version: int,
    payload: Mapping[str, Any],
    ciphers: Mapping[tuple[str, int], Cipher],
    aad: bytes,
    *,
    salts: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """The payload with every category whose keys are all held opened; the others stay sealed.

    One pass over the tokens (what :func:`needed_keys` and :func:`open_payload`
    with ``categories`` do in two).  ``ciphers`` maps ``(category, epoch)`` to
    the cipher of a held key (:func:`cipher_of`, made once per key for all the
    rows it opens); a category is opened only when every epoch its tokens name
    in this payload is held.  Every token is checked for form and label, held
    or not; a held one that does not authenticate, or (version 2) does not
    match its commitment, raises :class:`TamperedCiphertext` and nothing is
    returned.  ``salts``, when given, receives the salt of each opened
    version 2 field by JSON path (to recompute its commitment:
    :func:`pipelines.access.verify.verify_opened_row`).
    """
    pending: list[tuple[SealedField, bool, str, str, bytes, Cipher, str, str | None]] = []
    missing: set[str] = set()
    for field, nested, name, expected, aad_mid in _plan(event_type, version)[0]:
        holder = _locate(payload, field.keys) if nested else payload
        if holder is None or name not in holder:
            continue
        token = holder[name]
        match = _TOKEN.match(token) if type(token) is str else None
        if match is None:
            if not isinstance(token, str) or not token.startswith(_TOKEN_PREFIXES):
                raise TamperedCiphertext(f"{field.path}: expected a sealed field, found a plain value")
            raise TamperedCiphertext(f"{field.path}: not an enc:v1 or enc:v2 token")
        category = match[1]
        if category != expected or category not in CATEGORIES:
            raise TamperedCiphertext(
                f"{field.path}: token labelled {category!r}, the schema says {expected!r}"
            )
        cipher = ciphers.get((category, int(match[2])))
        if cipher is None:
            missing.add(category)
        else:
            pending.append((field, nested, name, category, aad_mid, cipher, match[4], match[3]))
    out = dict(payload)
    for field, nested, name, category, aad_mid, cipher, text, commit in pending:
        if category in missing:
            continue
        value = _decrypt(cipher, text, aad + aad_mid, field.path, category, commit, salts)
        parent = _copy_path(out, field.keys) if nested else out
        parent[name] = value
    return out


def _decrypt(
    cipher: Cipher,
    text: str,
    aad: bytes,
    path: str,
    category: str,
    commit: str | None = None,
    salts: dict[str, bytes] | None = None,
) -> Any:
    """One token's value; :class:`TamperedCiphertext` naming the field when it does not authenticate.

    ``commit`` (version 2): the hex commitment the token carries; the plaintext
    ``salt || JCS(value)`` must hash to it.
    """
    try:
        blob = binascii.a2b_base64(text, strict_mode=True)
        plain = cipher[0].decrypt(blob[:_NONCE], blob[_NONCE:], aad + cipher[2])
        if commit is None:
            return orjson.loads(plain)
    except (InvalidTag, binascii.Error, ValueError):
        raise TamperedCiphertext(
            f"{path}: {category} epoch {cipher[2].decode()} does not authenticate "
            "(altered, moved from another row or field, or sealed under another key)"
        ) from None
    if len(plain) <= _SALT or sha256(plain).hexdigest() != commit:
        raise TamperedCiphertext(f"{path}: tampered: the sealed value does not match its commitment")
    try:
        value = orjson.loads(plain[_SALT:])
    except ValueError:
        raise TamperedCiphertext(f"{path}: tampered: the sealed value is not JSON") from None
    if salts is not None:
        salts[path] = plain[:_SALT]
    return value


def open_payload(
    event_type: str,
    version: int,
    payload: Mapping[str, Any],
    key_lookup: KeyLookup,
    aad: bytes,
    *,
    categories: Collection[str] | None = None,
    salts: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """The plaintext payload of a sealed one.

    ``categories`` limits what is opened (the rest stays sealed); by default
    every sealed field must open.  Raises :class:`AccessDenied` when
    ``key_lookup`` refuses a key and :class:`TamperedCiphertext` when a token
    is malformed, relabelled, moved or altered; nothing is returned then.
    """
    out = dict(payload)
    ciphers: dict[tuple[str, int], Cipher] = {}
    for (field, nested, name, expected, aad_mid), token in _tokens(event_type, version, payload):
        match = _TOKEN.match(token)
        if match is None:
            raise TamperedCiphertext(f"{field.path}: not an enc:v1 or enc:v2 token")
        category, epoch, commit, text = match[1], int(match[2]), match[3], match[4]
        if category != expected or category not in CATEGORIES:
            raise TamperedCiphertext(
                f"{field.path}: token labelled {category!r}, the schema says {expected!r}"
            )
        if categories is not None and category not in categories:
            continue
        cipher = ciphers.get((category, epoch))
        if cipher is None:
            key = key_lookup(category, epoch)
            if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
                raise AccessDenied(f"{field.path}: no usable key for {category} epoch {epoch}")
            cipher = ciphers[(category, epoch)] = _cipher(category, epoch, bytes(key))
        value = _decrypt(cipher, text, aad + aad_mid, field.path, category, commit, salts)
        parent = _copy_path(out, field.keys) if nested else out
        parent[name] = value
    return out
