"""An event's inclusion proof, and checking it against the chain (``GET /v1/proof/{event_id}``, ``pcc verify``).

The proof of an event is what its row carries (``leaf_hash``, ``log_index``,
``tree_size``, ``root``, ``source_id``) plus the audit path from the leaf to
that root: the row's ``proof_path`` (the path the producer published with the
event, kept by the speed layer), else the master dataset's ``proof_path`` for
that event (DuckDB over the Parquet partition of its event date: batch views
may not carry the column), else an :class:`~serving.passport.AuditPaths`
lookup (the producer's own ``leaves.bin``, only on a producer's machine), else
none ("no path": the anchor can still be checked).

:func:`check_proof` is what a consumer runs: the root the chain anchored for
``(source_id, tree_size)`` (``ledger.client``'s ``AnchorsApi.root_at``) must be
the proof's root, and the audit path must lead from the leaf hash to it
(:func:`pipelines.merkle.verify_inclusion`).  It trusts nothing the service says.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
from fastapi import APIRouter
from typing_extensions import TypedDict  # pydantic reads it on Python 3.11 (the API documents it)

from pipelines import merkle
from pipelines.dataset import master_files, read_layout
from serving.engine.views import ServingStore
from serving.errors import EventNotFoundError, ProofMismatchError
from serving.passport.verify import AuditPaths, RootLookup

_FIELDS = ("event_id", "source_id", "leaf_hash", "log_index", "tree_size", "root")


class EventProof(TypedDict):
    """``GET /v1/proof/{event_id}``: what anyone needs to check an event against the anchored root."""

    event_id: str
    source_id: str
    leaf_hash: str  # hex RFC 6962 leaf hash: SHA-256(0x00 || SHA-256(JCS(envelope without proof, sealed)))
    log_index: int
    tree_size: int  # the anchored checkpoint the event belongs to
    root: str  # that checkpoint's root, hex
    path: list[str] | None  # the RFC 9162 audit path, hex; None when no copy of it is reachable
    #: where the path came from: the serving views, the master dataset or the producer's log
    path_from: Literal["dataset", "master_dataset", "producer_log"] | None


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    text = str(value)
    return text[2:] if text.startswith("0x") else text


def master_path(master_dir: Path, event_id: str, event_time: Any) -> list[str] | None:
    """The audit path the master dataset holds for an event (read from its event date's partition)."""
    if read_layout(master_dir) is not None:  # vehicle buckets: the event id is looked up in every file
        partitions = []
    elif isinstance(event_time, datetime):
        utc = event_time.astimezone(UTC) if event_time.tzinfo else event_time
        partitions = [master_dir / f"event_date={utc.strftime('%Y-%m-%d')}"]
    else:
        partitions = sorted(master_dir.glob("event_date=*"))
    files = [str(f) for d in partitions if d.is_dir() for f in sorted(d.glob("*.parquet"))]
    if not partitions:
        files = [str(f) for f in master_files(master_dir)]
    if not files:
        return None
    con = duckdb.connect()
    try:
        rows = con.execute(
            "SELECT proof_path FROM read_parquet(?, union_by_name = true) "
            "WHERE event_id = ? AND proof_path IS NOT NULL LIMIT 1",
            [files, event_id],
        ).fetchall()
    except duckdb.BinderException:
        return None  # files written before the master schema had proof_path
    finally:
        con.close()
    return [str(h) for h in rows[0][0]] if rows else None


def find_proof(
    store: ServingStore, event_id: str, paths: AuditPaths | None = None, master_dir: Path | None = None
) -> EventProof:
    """The proof of one event as the serving views hold it; raises :class:`EventNotFoundError`."""
    columns = {c for c, _ in store.columns().get("vehicle_history", [])}
    select = ", ".join(_FIELDS) + ", event_time" + (", proof_path" if "proof_path" in columns else "")
    with store.pin() as (cur, _version):
        rows = cur.execute(
            f"SELECT {select} FROM vehicle_history WHERE event_id = ? LIMIT 1", [event_id]
        ).fetchall()
    if not rows:
        raise EventNotFoundError(f"no event {event_id!r} in the serving views")
    row = dict(zip([*_FIELDS, "event_time", "proof_path"], rows[0], strict=False))
    proof: EventProof = {
        "event_id": str(row["event_id"]),
        "source_id": str(row["source_id"]),
        "leaf_hash": _hex(row["leaf_hash"]),
        "log_index": int(row["log_index"]),
        "tree_size": int(row["tree_size"]),
        "root": _hex(row["root"]),
        "path": None,
        "path_from": None,
    }
    if row.get("proof_path") is not None:
        proof["path"], proof["path_from"] = [_hex(h) for h in row["proof_path"]], "dataset"
    elif master_dir is not None and (found_hex := master_path(master_dir, event_id, row["event_time"])):
        proof["path"], proof["path_from"] = found_hex, "master_dataset"
    elif paths is not None:
        found = paths.audit_path(proof["source_id"], proof["log_index"], proof["tree_size"])
        if found is not None:
            proof["path"], proof["path_from"] = [h.hex() for h in found], "producer_log"
    return proof


def proof_router(
    store: ServingStore, paths: AuditPaths | None = None, master_dir: Path | None = None
) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/v1/proof/{event_id}", summary="An event's leaf hash, log position, anchored root and audit path"
    )
    def proof(event_id: str) -> EventProof:
        return find_proof(store, event_id, paths, master_dir)

    return router


@dataclass(frozen=True)
class ProofCheck:
    """What :func:`check_proof` found; ``inclusion`` is None when there was no path to check."""

    event_id: str
    source_id: str
    tree_size: int
    anchored: bool
    inclusion: bool | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.anchored and self.inclusion is not False

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_proof(proof: dict[str, Any], roots: RootLookup) -> ProofCheck:
    """Check a proof against the chain; never raises for a bad proof (see :func:`require_valid`)."""
    source, size = str(proof["source_id"]), int(proof["tree_size"])
    try:
        leaf, root = bytes.fromhex(proof["leaf_hash"]), bytes.fromhex(proof["root"])
        path = None if proof.get("path") is None else [bytes.fromhex(h) for h in proof["path"]]
    except (TypeError, ValueError) as exc:
        return ProofCheck(str(proof["event_id"]), source, size, False, False, f"malformed proof: {exc}")
    anchored_root = roots.root_at(source, size)
    if anchored_root is None:
        detail = f"no root is anchored for {source} at tree size {size}"
        return ProofCheck(str(proof["event_id"]), source, size, False, None, detail)
    anchored = bytes(anchored_root) == root
    if path is None:
        inclusion = None
        detail = "anchored root matches; no audit path (inclusion not checked)"
    else:
        inclusion = merkle.verify_inclusion(leaf, int(proof["log_index"]), size, path, bytes(anchored_root))
        detail = (
            "leaf included under the anchored root"
            if inclusion
            else "the audit path does not lead to the anchored root"
        )
    if not anchored:
        detail = (
            f"the chain anchors {bytes(anchored_root).hex()} for {source} at size {size}, not {root.hex()}"
        )
    return ProofCheck(str(proof["event_id"]), source, size, anchored, inclusion, detail)


def require_valid(check: ProofCheck) -> ProofCheck:
    if not check.ok:
        raise ProofMismatchError(f"event {check.event_id}: {check.detail}")
    return check
