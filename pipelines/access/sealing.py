"""Sealing at the source: a clear envelope becomes a version 2 envelope (docs/events.md).

The producer SDK calls :func:`seal_event` before anything leaves the member's
process: every protected payload member is replaced by its commitment
``cm:hex(SHA-256(salt || JCS(value)))`` and its value and salt are sealed
together (AES-256-GCM under the vehicle's current data key of the field's
category, the same AAD as version 1 tokens) into the envelope's ``sealed``
member::

    sealed[name] = "enc:v2:<category>:<epoch>:<commitment hex>:" + base64(nonce(12) | ciphertext+tag)

A ``location`` also gives the public ``region`` (0.1 degree), which the speed
layer's rules and the public ``lat``/``lon`` columns use.  The leaf hash covers
the public members and the commitments (``sealed`` is not hashed).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from functools import cache
from hashlib import sha256
from typing import Any

import orjson

from pipelines.canonical import canonical_bytes
from pipelines.dataset import region
from pipelines.events.commitments import COMMITTED_VERSION, SALT_SIZE
from pipelines.events.envelope import Envelope
from pipelines.events.registry import load_schema

from .fields import _NONCE, KeyFor, _current_cipher, _fresh, row_aad

#: ``randbytes(n) -> n random bytes``: the salts and nonces of one event (tests pass fixed ones).
RandomBytes = Callable[[int], bytes]


@cache
def committed_members(event_type: str) -> tuple[tuple[str, str, bytes], ...]:
    """Version 2: ``(member, category, AAD middle)`` of each committed payload member, by category."""
    props = load_schema(event_type, COMMITTED_VERSION)["properties"]
    members = [
        (
            name,
            sub["x-pcc-category"],
            b"\x00$.payload.%s\x00%s\x00" % (name.encode(), sub["x-pcc-category"].encode()),
        )
        for name, sub in props.items()
        if "x-pcc-value" in sub
    ]
    return tuple(sorted(members, key=lambda m: m[1]))


def _canonical_number(value: float | None) -> float | int:
    """A rounded coordinate as the wire must carry it: ``10`` not ``10.0``, ``0`` not ``-0.0``."""
    value = (value or 0.0) + 0.0
    return int(value) if value.is_integer() else value


def public_region(location: Any) -> dict[str, float | int] | None:
    """``{"lat", "lon"}`` rounded to 0.1 degree, or None without a location.

    Integral values are integers (``{"lat": 48, "lon": 2.4}``): strict parsing
    refuses ``48.0`` on the wire, and JCS writes both as ``48`` (same leaf).
    """
    if type(location) is not dict and not isinstance(location, Mapping):
        return None
    if "lat" not in location or "lon" not in location:
        return None
    lat, lon = location["lat"], location["lon"]
    return {"lat": _canonical_number(region(lat)), "lon": _canonical_number(region(lon))}


_INT_LIMIT = 2**53 - 1


def _jcs(value: Any) -> bytes:
    """RFC 8785 bytes of a field's value; integers and strings without the general walk."""
    kind = type(value)
    if kind is int and -_INT_LIMIT <= value <= _INT_LIMIT:
        return b"%d" % value
    if kind is str:
        try:
            return orjson.dumps(value)  # what canonical_bytes gives a string (a lone surrogate: below)
        except orjson.JSONEncodeError:
            pass
    elif kind is dict and len(value) <= 4 and all(_flat_ok(k, v) for k, v in value.items()):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)  # a location: {"lat", "lon"} floats
    return canonical_bytes(value)


def _flat_ok(key: Any, value: Any) -> bool:
    """A member ``orjson`` with sorted keys writes as JCS does: ASCII key, non-integral float in range."""
    return (
        type(key) is str
        and key.isascii()
        and type(value) is float
        and 1e-4 <= abs(value) < 1e15
        and not value.is_integer()
    )


def seal_event(env: Envelope, key_for: KeyFor, *, randbytes: RandomBytes = _fresh) -> Envelope:
    """The version 2 envelope of a clear (validated) one: commitments in ``payload``, values in ``sealed``.

    ``key_for(category) -> (epoch, key)`` is called once per protected category
    present.  Without protected members the envelope only changes version.
    """
    payload = dict(env["payload"])
    out: Envelope = {
        "event_id": env["event_id"],
        "event_type": env["event_type"],
        "schema_version": COMMITTED_VERSION,
        "source_id": env["source_id"],
        "vehicle": env["vehicle"],
        "event_time": env["event_time"],
        "ingestion_time": env["ingestion_time"],
        "payload": payload,
    }
    if "location" in payload and (place := public_region(payload["location"])) is not None:
        payload["region"] = place
    present = [m for m in committed_members(str(env["event_type"])) if m[0] in payload]
    if not present:
        return out
    aad = row_aad(str(env["vehicle"]), str(env["event_id"]))
    fresh = randbytes((SALT_SIZE + _NONCE) * len(present))
    sealed: dict[str, str] = {}
    at = 0
    current = ""
    for name, category, aad_mid in present:
        if category != current:
            current = category
            aead, _, tail = _current_cipher(category, key_for)
            prefix = f"enc:v2:{category}:{tail.decode()}:"
        plain = fresh[at : at + SALT_SIZE] + _jcs(payload[name])
        nonce = fresh[at + SALT_SIZE : at + SALT_SIZE + _NONCE]
        at += SALT_SIZE + _NONCE
        digest = sha256(plain).hexdigest()
        blob = nonce + aead.encrypt(nonce, plain, aad + aad_mid + tail)
        payload[name] = "cm:" + digest
        sealed[name] = prefix + digest + ":" + binascii.b2a_base64(blob, newline=False).decode("ascii")
    out["sealed"] = sealed
    return out


def stored_payload(env: Mapping[str, Any]) -> dict[str, Any]:
    """What a view keeps of a version 2 envelope's payload: each commitment replaced by its sealed token.

    The token carries the commitment, so the public form (:func:`public_payload`)
    and the leaf hash can be rebuilt from the stored row by anyone.
    """
    payload = dict(env["payload"])
    payload.update(env.get("sealed") or {})
    return payload


def public_payload(event_type: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The hashed payload of a stored version 2 row: each ``enc:v2`` token back to its commitment."""
    out = dict(payload)
    for name, _, _ in committed_members(event_type):
        value = out.get(name)
        if isinstance(value, str) and value.startswith("enc:v2:"):
            parts = value.split(":", 5)
            out[name] = "cm:" + parts[4] if len(parts) == 6 else value
    return out
