"""What a consumer checks: an event row against its producer's anchored checkpoint.

Version 1 rows: the producer hashed the *plaintext* envelope; views hold the
*sealed* payload plus that leaf hash.  Version 2 rows: the producer hashed the
public members and the *commitments* of the protected ones; views hold the
public members and the sealed tokens, each carrying its commitment.  So:

* anyone can check that a row's ``leaf_hash`` is in the tree with root
  ``root`` (:func:`verify_row_inclusion`) - this keeps working after an
  erasure, when nobody can open the row any more;
* on a version 2 row anyone also checks that the public fields are what was
  hashed (:func:`verify_public_row`: the leaf rebuilt from the public members
  and commitments);
* a grantee who opened the payload also checks that it is what was hashed
  (:func:`verify_opened_row`: version 1, the plaintext re-hashed; version 2,
  each opened value's commitment recomputed from its salt, then the leaf;
  then the inclusion proof).

Whether ``root`` is anchored on the ledger (AnchorRegistry, under the row's
``source_id``) is checked by the caller with the ledger client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from pipelines import merkle
from pipelines.canonical import leaf_hash
from pipelines.errors import PccValueError
from pipelines.events.commitments import COMMITTED_VERSION, commitment
from pipelines.events.envelope import format_time

from .sealing import committed_members, public_payload

ENVELOPE_FIELDS = (
    "event_id",
    "event_type",
    "schema_version",
    "source_id",
    "vehicle",
    "event_time",
    "ingestion_time",
)


def _time(value: Any) -> str:
    return format_time(value) if isinstance(value, datetime | int) else str(value)


def envelope_from_row(row: Mapping[str, Any], payload: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope (without proof) a view row stands for, with ``payload`` (plaintext)."""
    missing = [f for f in ENVELOPE_FIELDS if f not in row]
    if missing:
        raise PccValueError(f"row: missing envelope columns {missing}")
    return {
        "event_id": str(row["event_id"]),
        "event_type": str(row["event_type"]),
        "schema_version": int(row["schema_version"]),
        "source_id": str(row["source_id"]),
        "vehicle": str(row["vehicle"]),
        "event_time": _time(row["event_time"]),
        "ingestion_time": _time(row["ingestion_time"]),
        "payload": dict(payload),
    }


def _path(path: Sequence[str | bytes]) -> list[bytes]:
    try:
        return [bytes.fromhex(p) if isinstance(p, str) else bytes(p) for p in path]
    except ValueError:
        raise PccValueError("inclusion proof: path entries must be hex hashes") from None


def verify_row_inclusion(row: Mapping[str, Any], path: Sequence[str | bytes]) -> None:
    """Check the row's ``leaf_hash`` is at ``log_index`` in the tree (``tree_size``, ``root``)."""
    try:
        leaf, root = bytes.fromhex(str(row["leaf_hash"])), bytes.fromhex(str(row["root"]))
    except (KeyError, ValueError):
        raise PccValueError("row: leaf_hash and root must be hex") from None
    if not merkle.verify_inclusion(leaf, int(row["log_index"]), int(row["tree_size"]), _path(path), root):
        raise PccValueError(
            f"event {row.get('event_id')}: inclusion proof of leaf {int(row['log_index'])} does not verify "
            f"against root {row['root']} of tree size {int(row['tree_size'])}"
        )


def _stored(row: Mapping[str, Any]) -> dict[str, Any]:
    payload = row.get("payload")
    try:
        value = orjson.loads(payload) if isinstance(payload, str | bytes) else payload
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise PccValueError(f"event {row.get('event_id')}: the row's payload is not a JSON object")
    return dict(value)


def public_envelope(row: Mapping[str, Any]) -> dict[str, Any]:
    """The hashed envelope of a stored version 2 row: public members and commitments, nothing sealed."""
    if int(row["schema_version"]) != COMMITTED_VERSION:
        raise PccValueError(
            f"event {row.get('event_id')}: a version {row['schema_version']} row hashes protected values "
            "in clear; only a grantee who opened them can rebuild its leaf"
        )
    return envelope_from_row(row, public_payload(str(row["event_type"]), _stored(row)))


def verify_public_row(row: Mapping[str, Any], path: Sequence[str | bytes]) -> bytes:
    """Version 2: the row's public fields and commitments hash to its leaf, and the leaf is in the log."""
    leaf = leaf_hash(public_envelope(row))
    if leaf.hex() != str(row.get("leaf_hash")):
        raise PccValueError(
            f"event {row.get('event_id')}: the public fields do not hash to the row's leaf hash"
        )
    verify_row_inclusion(row, path)
    return leaf


def verify_opened_row(
    row: Mapping[str, Any],
    payload: Mapping[str, Any],
    path: Sequence[str | bytes],
    *,
    salts: Mapping[str, bytes] | None = None,
) -> bytes:
    """Check an opened payload is what the producer hashed, and that hash is in the log; the leaf hash.

    Version 2: ``salts`` are the salts :func:`~pipelines.access.fields.open_held`
    gave for the opened fields (by JSON path); each opened value's commitment
    is recomputed from them and must be the one the row carries; members left
    sealed count by the commitment their token carries.
    """
    if int(row.get("schema_version", 1)) == COMMITTED_VERSION:
        stored = public_payload(str(row["event_type"]), _stored(row))
        hashed = dict(payload)
        for name, _, _ in committed_members(str(row["event_type"])):
            if name not in hashed:
                continue
            value = hashed[name]
            if isinstance(value, str) and value.startswith(("enc:v2:", "cm:")):
                hashed[name] = stored.get(name)  # still sealed: its commitment as stored
                continue
            salt = (salts or {}).get(f"$.payload.{name}")
            if salt is None:
                raise PccValueError(
                    f"event {row.get('event_id')}: $.payload.{name}: no salt to recompute its commitment"
                )
            hashed[name] = commitment(salt, value)
            if hashed[name] != stored.get(name):
                raise PccValueError(
                    f"event {row.get('event_id')}: $.payload.{name}: the opened value does not match its commitment"
                )
        payload = hashed
    leaf = leaf_hash(envelope_from_row(row, payload))
    if leaf.hex() != str(row.get("leaf_hash")):
        raise PccValueError(
            f"event {row.get('event_id')}: the opened payload does not hash to the row's leaf hash"
        )
    verify_row_inclusion(row, path)
    return leaf
