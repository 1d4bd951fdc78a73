"""What a consumer checks: an event row against its producer's anchored checkpoint.

The producer hashes the *plaintext* envelope (docs/contracts.md); views hold
the *sealed* payload plus that leaf hash.  So:

* anyone can check that a row's ``leaf_hash`` is in the tree with root
  ``root`` (:func:`verify_row_inclusion`) - this keeps working after an
  erasure, when nobody can open the row any more;
* a grantee who opened the payload also checks that the plaintext is what was
  hashed (:func:`verify_opened_row`: rebuild the envelope, RFC 8785, leaf
  hash, compare, then the inclusion proof).

Whether ``root`` is anchored on the ledger (AnchorRegistry, under the row's
``source_id``) is checked by the caller with the ledger client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pipelines import merkle
from pipelines.canonical import leaf_hash
from pipelines.errors import PccValueError
from pipelines.events.envelope import format_time

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


def verify_opened_row(
    row: Mapping[str, Any], payload: Mapping[str, Any], path: Sequence[str | bytes]
) -> bytes:
    """Check an opened payload is what the producer hashed, and that hash is in the log; the leaf hash."""
    leaf = leaf_hash(envelope_from_row(row, payload))
    if leaf.hex() != str(row.get("leaf_hash")):
        raise PccValueError(
            f"event {row.get('event_id')}: the opened payload does not hash to the row's leaf hash"
        )
    verify_row_inclusion(row, path)
    return leaf
