"""The 'verify' link: does an event in the serving views match what its source anchored on the chain?

Three checks, in order, each reported so a reader sees which one failed:

1. **content**: the envelope rebuilt from the stored row (id, type, schema
   version, source, vehicle, times, payload) hashes to the row's
   ``leaf_hash`` (``pipelines.canonical.leaf_hash``).  A mismatch means the
   stored event is not the one the source logged.  A version 2 event with
   sealed fields is rebuilt from its public fields and the salted commitments
   its tokens carry (what the leaf covers); a version 1 event with sealed
   fields hashed their clear values, so only a grantee can check its content
   (the check is then left open, ``ok`` None).
2. **anchor**: the ledger holds a checkpoint root for ``(source_id,
   tree_size)`` (:class:`RootLookup`, e.g. ``ledger.client``'s ``root_at``).
3. **inclusion**: the audit path (the row's ``path`` if it has one, else an
   :class:`AuditPaths` lookup) leads from the leaf at ``log_index`` to that
   anchored root (``pipelines.merkle.verify_inclusion``).

Outcome ``status``: ``verified`` (all three hold), ``tampered`` (content or
inclusion fails), ``unanchored`` (no checkpoint on the chain yet) or
``no_proof`` (no audit path available to check inclusion).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, overload, runtime_checkable

from pipelines import canonical, merkle
from pipelines.access.verify import envelope_from_row, public_envelope
from pipelines.errors import PccError, PccValueError
from pipelines.events.commitments import COMMITTED_VERSION
from serving.passport.errors import ChainUnavailableError


@runtime_checkable
class RootLookup(Protocol):
    """Anchored checkpoint roots (``ledger.client`` and ``MemoryAnchor`` have this method)."""

    def root_at(self, source_id: str, tree_size: int) -> bytes | None: ...


@runtime_checkable
class AuditPaths(Protocol):
    """RFC 6962 audit paths of a source's log (what a transparency log's get-proof serves)."""

    def audit_path(self, source_id: str, log_index: int, tree_size: int) -> list[bytes] | None: ...


class InMemoryRoots:
    """A :class:`RootLookup` over a dict ``{(source_id, tree_size): root}``."""

    def __init__(self, roots: Mapping[tuple[str, int], bytes] | None = None) -> None:
        self.roots: dict[tuple[str, int], bytes] = dict(roots or {})

    def root_at(self, source_id: str, tree_size: int) -> bytes | None:
        return self.roots.get((source_id, tree_size))


class _Prefix(Sequence[bytes]):
    """The first ``n`` hashes of a leaf-hash sequence, without copying them."""

    def __init__(self, leaves: Sequence[bytes], n: int) -> None:
        self._leaves, self._n = leaves, n

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._leaves[i]


class LeafFilePaths:
    """:class:`AuditPaths` computed from producers' leaf-hash files (``<log dir>/leaves.bin``).

    ``logs`` maps a source id to its producer log directory.  O(tree_size) hashing per path.
    """

    def __init__(self, logs: Mapping[str, str | os.PathLike[str]]) -> None:
        self._logs = {k: Path(v) for k, v in logs.items()}

    def audit_path(self, source_id: str, log_index: int, tree_size: int) -> list[bytes] | None:
        directory = self._logs.get(source_id)
        if directory is None or not (directory / "leaves.bin").exists():
            return None
        leaves = merkle.LeafHashFile(directory / "leaves.bin")
        try:
            if tree_size > len(leaves) or not 0 <= log_index < tree_size:
                return None
            return merkle.inclusion_proof(_Prefix(leaves, tree_size), log_index)
        finally:
            leaves.close()


@dataclass
class Check:
    name: str  # content | anchor | inclusion
    ok: bool | None  # None: could not be checked
    detail: str


@dataclass
class Verification:
    event_id: str
    status: str  # verified | tampered | unanchored | no_proof
    source_id: str
    log_index: int
    tree_size: int
    leaf_hash: str
    anchored_root: str | None
    checks: list[Check] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def envelope_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The hashed part of the envelope (no proof), rebuilt from a ``vehicle_history`` row."""
    payload = row.get("payload")
    try:
        plain = json.loads(payload) if isinstance(payload, str | bytes) else dict(payload or {})
    except (ValueError, TypeError) as exc:
        raise PccValueError(f"event {row.get('event_id')}: payload is not a JSON object ({exc})") from None
    if "payload" not in row:
        raise PccValueError(f"event {row.get('event_id')}: row lacks column 'payload'")
    return envelope_from_row(row, plain)


def _sealed(row: Mapping[str, Any]) -> bool:
    """Whether the row's payload has sealed (protected) fields: only a grantee can re-hash it."""
    from pipelines.access import needed_keys

    try:
        payload = row["payload"]
        payload = json.loads(payload) if isinstance(payload, str | bytes) else payload
        return bool(needed_keys(str(row["event_type"]), int(row["schema_version"]), payload))
    except (PccError, KeyError, ValueError, TypeError):
        return False


def _row_path(row: Mapping[str, Any]) -> list[bytes] | None:
    path = row.get("proof_path", row.get("path"))
    if path is None:
        return None
    if isinstance(path, str):
        path = json.loads(path)
    return [bytes.fromhex(h) if isinstance(h, str) else bytes(h) for h in path]


def verify_event(row: Mapping[str, Any], roots: RootLookup, paths: AuditPaths | None = None) -> Verification:
    """Check one ``vehicle_history`` row against its source's anchored checkpoint."""
    event_id, source_id = str(row["event_id"]), str(row["source_id"])
    log_index, tree_size = int(row["log_index"]), int(row["tree_size"])
    stored_leaf = str(row["leaf_hash"])
    result = Verification(event_id, "verified", source_id, log_index, tree_size, stored_leaf, None)

    if _sealed(row) and int(row["schema_version"]) == COMMITTED_VERSION:
        # version 2: the leaf commits to the public fields and the salted commitments of the sealed ones,
        # which the row carries: anyone rebuilds it; only a grantee checks an opened value against its
        # commitment (pipelines.access.verify_opened_row)
        leaf = _content(
            result,
            lambda: public_envelope(row),
            "the public fields and commitments hash",
            "the public fields and the salted commitments of the sealed ones hash",
            "; a sealed value is checked against its commitment by a grantee who opens it",
        )
        return result if leaf is None else _anchor_and_path(result, row, roots, paths, leaf)
    if _sealed(row):
        result.checks.append(
            Check(
                "content",
                None,
                "protected fields are sealed: this version 1 event's logged leaf commits to their clear "
                "values, which only a grantee can re-hash (pipelines.access.verify_opened_row)",
            )
        )
        leaf = bytes.fromhex(stored_leaf)
        return _anchor_and_path(result, row, roots, paths, leaf)
    leaf = _content(result, lambda: envelope_of(row), "the stored event hashes", "the stored event hashes")
    return result if leaf is None else _anchor_and_path(result, row, roots, paths, leaf)


def _content(
    result: Verification, envelope: Callable[[], Mapping[str, Any]], fails: str, holds: str, note: str = ""
) -> bytes | None:
    """Rebuild the leaf from what the row shows and compare it with the logged one; None when tampered."""
    stored_leaf = result.leaf_hash
    try:
        leaf = canonical.leaf_hash(envelope())
    except PccValueError as exc:
        result.checks.append(Check("content", False, str(exc)))
        result.status = "tampered"
        return None
    if leaf.hex() != stored_leaf.lower():
        result.checks.append(
            Check("content", False, f"{fails} to {leaf.hex()}, not to its logged leaf {stored_leaf}")
        )
        result.status = "tampered"
        return None
    result.checks.append(Check("content", True, f"{holds} to its logged leaf {stored_leaf}{note}"))
    return leaf


def _anchor_and_path(
    result: Verification, row: Mapping[str, Any], roots: RootLookup, paths: AuditPaths | None, leaf: bytes
) -> Verification:
    source_id, log_index, tree_size = result.source_id, result.log_index, result.tree_size
    try:
        anchored = roots.root_at(source_id, tree_size)
    except PccError as exc:
        if exc.transient:
            raise ChainUnavailableError(f"checkpoint roots unavailable: {exc}") from None
        raise
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise ChainUnavailableError(f"checkpoint roots unavailable: {exc}") from None
    if anchored is None:
        result.checks.append(
            Check("anchor", None, f"no checkpoint of size {tree_size} is anchored for source {source_id}")
        )
        result.status = "unanchored"
        return result
    result.anchored_root = anchored.hex()
    note = (
        ""
        if anchored.hex() == str(row.get("root", "")).lower()
        else " (the event's proof named another root)"
    )
    result.checks.append(
        Check("anchor", True, f"source {source_id} anchored root {anchored.hex()} at size {tree_size}{note}")
    )

    try:
        path = _row_path(row)
    except ValueError:
        path = None
    if path is None and paths is not None:
        path = paths.audit_path(source_id, log_index, tree_size)
    if path is None:
        result.checks.append(Check("inclusion", None, "no audit path is available for this event"))
        result.status = "no_proof"
        return result
    if merkle.verify_inclusion(leaf, log_index, tree_size, path, anchored):
        result.checks.append(
            Check("inclusion", True, f"leaf {log_index} is in the anchored tree of {tree_size} leaves")
        )
    else:
        result.checks.append(
            Check(
                "inclusion", False, f"the audit path does not lead from leaf {log_index} to the anchored root"
            )
        )
        result.status = "tampered"
    return result
