"""Sealing protected payload fields: authenticated encryption per vehicle, category and key epoch.

Each field whose schema category (``x-pcc-category``) is not public is replaced
by a self-describing token::

    enc:v1:<category>:<epoch>:<base64(nonce(12) | AES-256-GCM ciphertext+tag)>

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
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
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
_TOKEN = re.compile(r"^enc:v1:([a-z_]{1,32}):(0|[1-9][0-9]{0,9}):([A-Za-z0-9+/]{38,}={0,2})$")
_NONCE = 12
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


def sealed_categories(event_type: str, version: int = 1) -> frozenset[str]:
    """The protected categories present in this payload schema."""
    return frozenset(f.category for f in sealed_fields(event_type, version))


def row_aad(vehicle: str, event_id: str) -> bytes:
    """The row part of every field's associated data: vehicle pseudonym and event id."""
    return b"pcc-field-v1\x00" + vehicle.encode() + b"\x00" + event_id.encode()


def _field_aad(aad: bytes, field: SealedField, epoch: int) -> bytes:
    return b"%s\x00%s\x00%s\x00%d" % (aad, field.path.encode(), field.category.encode(), epoch)


@lru_cache(maxsize=4096)
def _aead(key: bytes) -> AESGCM:
    return AESGCM(key)


def forget_ciphers() -> None:
    """Drop the cipher objects cached per key (on erasure: they hold key material)."""
    _aead.cache_clear()


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _unb64(text: str) -> bytes:
    return binascii.a2b_base64(text, strict_mode=True)


def is_token(value: object) -> bool:
    """Whether ``value`` looks like a sealed-field token."""
    return isinstance(value, str) and value.startswith(TOKEN_PREFIX)


def token_info(token: str) -> tuple[str, int]:
    """``(category, epoch)`` of a sealed-field token; a malformed token raises :class:`TamperedCiphertext`."""
    match = _TOKEN.match(token) if isinstance(token, str) else None
    if match is None:
        raise TamperedCiphertext("sealed field: not an enc:v1 token")
    return match.group(1), int(match.group(2))


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


def _plain_bytes(value: Any, field: SealedField) -> bytes:
    """Compact JSON of a field value; what JSON cannot carry exactly (NaN, huge ints) is refused."""
    try:
        out: bytes | None = orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        out = None
    if out is None or b"null" in out:  # orjson writes NaN and infinities as null: take the strict path
        try:
            return canonical_bytes(value)
        except PccValueError as exc:
            raise PccValueError(f"{field.path}: {exc}") from None
    return out


def seal_payload(
    event_type: str, version: int, payload: Mapping[str, Any], key_for: KeyFor, aad: bytes
) -> dict[str, Any]:
    """A copy of ``payload`` with every protected field replaced by its token.

    ``key_for`` is called once per protected category present; ``aad`` is
    :func:`row_aad` of the event.  Fields that are absent stay absent.
    """
    out = dict(payload)
    ciphers: dict[str, tuple[int, AESGCM]] = {}
    for field in sealed_fields(event_type, version):
        holder = _locate(out, field.keys)
        if holder is None or field.keys[-1] not in holder:
            continue
        entry = ciphers.get(field.category)
        if entry is None:
            epoch, key = key_for(field.category)
            if type(epoch) is not int or epoch < 0 or len(key) != KEY_SIZE:
                raise PccValueError(f"key for {field.category}: need a 32-byte key and an epoch >= 0")
            entry = ciphers[field.category] = (epoch, _aead(bytes(key)))
        epoch, aead = entry
        parent = _copy_path(out, field.keys) if len(field.keys) > 1 else out
        nonce = os.urandom(_NONCE)
        sealed = aead.encrypt(
            nonce, _plain_bytes(parent[field.keys[-1]], field), _field_aad(aad, field, epoch)
        )
        parent[field.keys[-1]] = f"{TOKEN_PREFIX}{field.category}:{epoch}:{_b64(nonce + sealed)}"
    return out


def iter_tokens(
    event_type: str, version: int, payload: Mapping[str, Any]
) -> Iterator[tuple[SealedField, str]]:
    """Each present sealed field and its token; a plaintext value where a token belongs is refused."""
    for field in sealed_fields(event_type, version):
        holder = _locate(payload, field.keys)
        if holder is None or field.keys[-1] not in holder:
            continue
        value = holder[field.keys[-1]]
        if not is_token(value):
            raise TamperedCiphertext(f"{field.path}: expected a sealed field, found a plain value")
        yield field, value


def needed_keys(event_type: str, version: int, payload: Mapping[str, Any]) -> set[tuple[str, int]]:
    """The ``(category, epoch)`` pairs whose keys are needed to open this sealed payload."""
    return {token_info(token) for _, token in iter_tokens(event_type, version, payload)}


def open_payload(
    event_type: str,
    version: int,
    payload: Mapping[str, Any],
    key_lookup: KeyLookup,
    aad: bytes,
    *,
    categories: Collection[str] | None = None,
) -> dict[str, Any]:
    """The plaintext payload of a sealed one.

    ``categories`` limits what is opened (the rest stays sealed); by default
    every sealed field must open.  Raises :class:`AccessDenied` when
    ``key_lookup`` refuses a key and :class:`TamperedCiphertext` when a token
    is malformed, relabelled, moved or altered; nothing is returned then.
    """
    out = dict(payload)
    ciphers: dict[tuple[str, int], AESGCM] = {}
    for field, token in list(iter_tokens(event_type, version, payload)):
        category, epoch = token_info(token)
        if category != field.category or category not in CATEGORIES:
            raise TamperedCiphertext(
                f"{field.path}: token labelled {category!r}, the schema says {field.category!r}"
            )
        if categories is not None and category not in categories:
            continue
        aead = ciphers.get((category, epoch))
        if aead is None:
            key = key_lookup(category, epoch)
            if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
                raise AccessDenied(f"{field.path}: no usable key for {category} epoch {epoch}")
            aead = ciphers[(category, epoch)] = _aead(bytes(key))
        try:
            blob = _unb64(token[token.rindex(":") + 1 :])
            plain = aead.decrypt(blob[:_NONCE], blob[_NONCE:], _field_aad(aad, field, epoch))
            value = orjson.loads(plain)
        except (InvalidTag, binascii.Error, ValueError):
            raise TamperedCiphertext(
                f"{field.path}: {category} epoch {epoch} does not authenticate "
                "(altered, moved from another row or field, or sealed under another key)"
            ) from None
        parent = _copy_path(out, field.keys) if len(field.keys) > 1 else out
        parent[field.keys[-1]] = value
    return out
