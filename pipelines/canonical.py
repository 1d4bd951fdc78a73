"""Canonical bytes and the leaf hash of an event envelope.

``leaf_data = SHA-256(JCS(envelope without "proof" and "sealed"))`` with JCS the RFC 8785
JSON Canonicalization Scheme (``sealed`` exists in version 2 envelopes only: the
sealed values of the committed fields, whose commitments the payload carries) (the ``rfc8785`` library), and
``leaf_hash = SHA-256(0x00 || leaf_data)`` (RFC 6962 leaf, see
:mod:`pipelines.merkle`).  Values JSON cannot carry exactly (NaN, infinities,
integers beyond 2**53-1, non-string keys, lone surrogates, other types) raise
:class:`~pipelines.errors.PccValueError` naming the path, e.g.
``$.payload.location.lat``.

Speed: documents made only of ASCII keys, strings, booleans, null, integers
within ±(2**53-1) and non-integral floats with 1e-4 <= |x| < 1e15 (every
event envelope) are serialized by ``orjson`` with sorted keys, which yields
exactly the RFC 8785 bytes for that domain (a property test checks it against
``rfc8785``); anything else goes through ``rfc8785``.

An integral float of magnitude 2**53 or more (say ``1e16``) canonicalizes to
integer digits; whoever parses those back gets an integer outside the exact
range, which is refused.  Payload schemas keep integers well inside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from hashlib import sha256
from typing import Any

import orjson
import rfc8785

from pipelines import merkle
from pipelines.errors import PccValueError

_INT_LIMIT = 2**53 - 1


def _fast_ok(obj: Any, depth: int = 0) -> bool:
    """True when ``orjson`` with sorted keys gives the RFC 8785 bytes of ``obj``."""
    t = type(obj)
    if t is dict:
        for k in obj:
            if type(k) is not str or not k.isascii():
                return False
        return depth <= 64 and _members_ok(obj.values(), depth)
    if t is list:
        return depth <= 64 and _members_ok(obj, depth)
    if t is str or t is bool or obj is None:
        return True
    if t is int:
        value: int = obj
        return -_INT_LIMIT <= value <= _INT_LIMIT
    if t is float:
        a = abs(obj)
        return 1e-4 <= a < 1e15 and not obj.is_integer()
    return False


def _members_ok(values: Iterable[Any], depth: int) -> bool:
    """:func:`_fast_ok` of each member; strings, booleans, null and integers judged here, not by a call
    per leaf (the speed layer asks twice an event)."""
    for v in values:
        tv = type(v)
        if tv is str or tv is bool or v is None:
            continue
        if tv is int:
            if not -_INT_LIMIT <= v <= _INT_LIMIT:
                return False
        elif not _fast_ok(v, depth + 1):
            return False
    return True


def canonical_bytes(obj: Any) -> bytes:
    """RFC 8785 canonical UTF-8 bytes of a JSON value (dicts, lists, str, int, float, bool, None)."""
    if _fast_ok(obj):
        try:
            return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # e.g. a lone surrogate: the slow path names it
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, UnicodeError, RecursionError) as exc:
        problem = _find_problem(obj, "$", 0) or str(exc)
        raise PccValueError(f"value cannot be canonicalized as JSON: {problem}") from None


#: Envelope members that are not hashed: the inclusion proof, and (version 2) the sealed values.
UNHASHED = ("proof", "sealed")


def envelope_without_proof(env: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy of the envelope without ``proof`` and ``sealed`` (the hashed part)."""
    if not isinstance(env, Mapping):
        raise PccValueError(f"an event envelope must be a JSON object, got {type(env).__name__}")
    return {k: v for k, v in env.items() if k not in UNHASHED}


def leaf_data(env: Mapping[str, Any]) -> bytes:
    """``SHA-256(JCS(envelope without "proof" and "sealed"))``: 32 bytes."""
    return sha256(canonical_bytes(envelope_without_proof(env))).digest()


def leaf_hash(env: Mapping[str, Any]) -> bytes:
    """The envelope's RFC 6962 leaf hash in its source's log: ``SHA-256(0x00 || leaf_data)``."""
    return merkle.hash_leaf(leaf_data(env))


def _member(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key)}]"


def _find_problem(obj: Any, path: str, depth: int) -> str | None:
    """The first value JCS rejects, as ``"<path>: <reason>"``, or None."""
    if depth > 500:
        return f"{path}: nested too deeply"
    if obj is None or isinstance(obj, bool):
        return None
    if isinstance(obj, int):
        return None if -_INT_LIMIT <= obj <= _INT_LIMIT else f"{path}: integer {obj} exceeds ±(2**53-1)"
    if isinstance(obj, float):
        return None if math.isfinite(obj) else f"{path}: {obj} is not a JSON number"
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return f"{path}: string holds a lone surrogate"
        return None
    if isinstance(obj, list | tuple):
        for i, item in enumerate(obj):
            if problem := _find_problem(item, f"{path}[{i}]", depth + 1):
                return problem
        return None
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                return f"{path}: object key {key!r} is not a string"
            if _find_problem(key, path, depth + 1):
                return f"{path}: object key {key!r} holds a lone surrogate"
            if problem := _find_problem(value, _member(path, key), depth + 1):
                return problem
        return None
    return f"{path}: {type(obj).__name__} is not a JSON type"
