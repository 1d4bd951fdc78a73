"""Master datasets from simulator output (``pcc batch load-simulation``) or from plain rows.

The speed layer is what normally writes the master dataset.  This module
writes the same layout and schema (``pipelines.dataset.MASTER_SCHEMA``) so the
batch layer can run on a simulated fleet alone (the demo's evaluation, the
benches, hand-built fleets in tests): proofs are placeholders that are
consistent (a leaf hash that is the SHA-256 of the event id, log indexes in
order per source), verification is ``verified`` unless a row says otherwise.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.dataset import MASTER_SCHEMA, bucket_dir, read_layout, split_by_bucket
from pipelines.files import atomic_write

_TOPIC_BY_PREFIX = {"cc-": "pcc.telemetry", "ins-": "pcc.insurer"}


def pseudonym(vin: str) -> str:
    """A stand-in for the identity vault: ``v-`` + 32 hex of SHA-256(VIN)."""
    return "v-" + hashlib.sha256(vin.encode()).hexdigest()[:32]


def topic_for(source_id: str) -> str:
    for prefix, topic in _TOPIC_BY_PREFIX.items():
        if source_id.startswith(prefix):
            return topic
    return "pcc.garage"


def _ts(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def event_row(
    vehicle: str,
    event_type: str,
    event_time: datetime | str,
    source_id: str = "cc-aurora",
    odometer_km: int | None = None,
    payload: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    lag: timedelta = timedelta(seconds=2),
    **columns: Any,
) -> dict[str, Any]:
    """One master-dataset row with every column of ``MASTER_SCHEMA`` filled.

    ``columns`` override any column (``verification="unverified"``,
    ``quality=0.4``, ``flags=["odometer_rollback"]``, ``lat=..``...).
    """
    et = _ts(event_time)
    body = dict(payload or {})
    if odometer_km is not None:
        body.setdefault("odometer_km", odometer_km)
    eid = event_id or str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"{vehicle}/{event_type}/{et.isoformat()}/{source_id}")
    )
    ingestion = et + lag
    row: dict[str, Any] = {
        "event_id": eid,
        "event_type": event_type,
        "schema_version": 1,
        "source_id": source_id,
        "vehicle": vehicle,
        "event_time": et,
        "ingestion_time": ingestion,
        "processed_time": ingestion + timedelta(milliseconds=250),
        "odometer_km": odometer_km,
        "lat": None,
        "lon": None,
        "payload": json.dumps(body, sort_keys=True, separators=(",", ":")),
        "leaf_hash": hashlib.sha256(eid.encode()).hexdigest(),
        "log_index": 0,
        "tree_size": 1,
        "root": hashlib.sha256(b"root:" + eid.encode()).hexdigest(),
        "verification": "verified",
        "quality": 0.9,
        "q_source": 1.0,
        "q_proof": 1.0,
        "q_consistency": 1.0,
        "q_timeliness": 1.0,
        "q_completeness": 0.5,
        "flags": [],
        "topic": topic_for(source_id),
        "partition": int(hashlib.sha256(vehicle.encode()).hexdigest(), 16) % 4,
        "offset": 0,
        "event_date": et.strftime("%Y-%m-%d"),
    }
    row.update(columns)
    return row


def _number(rows: list[dict[str, Any]]) -> None:
    """Give log indexes per source and offsets per topic partition in ingestion order."""
    logs: dict[str, int] = {}
    offsets: dict[tuple[str, int], int] = {}
    for row in sorted(rows, key=lambda r: (r["ingestion_time"], r["event_id"])):
        i = logs.get(row["source_id"], 0)
        logs[row["source_id"]] = i + 1
        row["log_index"] = i
        row["tree_size"] = i + 1
        key = (row["topic"], row["partition"])
        row["offset"] = offsets.get(key, 0)
        offsets[key] = row["offset"] + 1


def write_master_dataset(
    rows: Iterable[dict[str, Any]],
    root: Path,
    segment: str = "seg-0",
    number: bool = True,
    row_group_size: int = 1_000_000,
) -> list[Path]:
    """Append ``rows`` to the master dataset at ``root``: one file per event date.

    Files are written whole or not at all, like the speed layer's.  Returns the files written.
    """
    rows = list(rows)
    if number:
        _number(rows)
    if read_layout(root) is not None:
        return _write_buckets(pa.Table.from_pylist(rows, schema=MASTER_SCHEMA), root, segment, row_group_size)
    by_date: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_date.setdefault(row["event_date"], []).append(row)
    written = []
    for date, part in sorted(by_date.items()):
        directory = root / f"event_date={date}"
        directory.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(part, schema=MASTER_SCHEMA)
        written.append(_write(table, directory / f"{segment}.parquet", row_group_size))
    return written


def _write(table: pa.Table, path: Path, row_group_size: int = 1_000_000) -> Path:
    """Write one Parquet file whole or not at all (a temporary name, then renamed)."""
    atomic_write(path, lambda fh: pq.write_table(table, fh, row_group_size=row_group_size))
    return path


def _write_buckets(table: pa.Table, root: Path, segment: str, row_group_size: int = 1_000_000) -> list[Path]:
    """A master dataset in the vehicle-bucket layout: one file per bucket, sorted by vehicle and event time."""
    buckets = read_layout(root)
    assert buckets is not None
    written = []
    for bucket, part in split_by_bucket(table, buckets):
        directory = root / bucket_dir(bucket)
        directory.mkdir(parents=True, exist_ok=True)
        written.append(_write(part, directory / f"{segment}.parquet", row_group_size))
    return written


def write_master_table(table: pa.Table, root: Path, segment: str = "seg-0") -> list[Path]:
    """Append an Arrow table with ``MASTER_SCHEMA`` columns, split by ``event_date``."""
    import pyarrow.compute as pc

    if read_layout(root) is not None:
        return _write_buckets(table.cast(MASTER_SCHEMA), root, segment)
    written = []
    for date in sorted(pc.unique(table["event_date"]).to_pylist()):
        part = table.filter(pc.equal(table["event_date"], date)).cast(MASTER_SCHEMA)
        directory = root / f"event_date={date}"
        directory.mkdir(parents=True, exist_ok=True)
        written.append(_write(part, directory / f"{segment}.parquet"))
    return written


def _owner(identity: Any) -> Any:
    if isinstance(identity, dict):
        key = f"{identity.get('name', '')}|{identity.get('id_number', '')}"
        return "o-" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return identity


def master_from_simulation(sim_dir: Path, root: Path, segment: str = "sim") -> dict[str, int]:
    """Turn ``pcc simulate`` output into a master dataset (stands in for the speed layer).

    The vehicle pseudonym is :func:`pseudonym` of the VIN, owner identities
    become owner pseudonyms, locations are lifted into ``lat``/``lon``, every
    event is ``verified`` with a placeholder-but-consistent proof, and a
    replayed event (same ``event_id`` again) is stored once with the
    ``duplicate_event`` flag, as the speed layer does.  Returns counts.
    """
    import orjson

    rows: dict[str, dict[str, Any]] = {}
    replays = 0
    for file in sorted((sim_dir / "events").glob("*.jsonl")):
        with open(file, "rb") as fh:
            for line in fh:
                ev = orjson.loads(line)
                eid = ev["event_id"]
                if eid in rows:
                    replays += 1
                    rows[eid]["flags"] = ["duplicate_event"]
                    continue
                payload = dict(ev["payload"])
                for key in ("new_owner", "previous_owner"):
                    if key in payload:
                        payload[key] = _owner(payload[key])
                loc = payload.get("location") or {}
                rows[eid] = event_row(
                    pseudonym(ev["vin"]),
                    ev["event_type"],
                    ev["event_time"],
                    ev["source_id"],
                    payload.get("odometer_km"),
                    payload,
                    event_id=eid,
                    lat=loc.get("lat"),
                    lon=loc.get("lon"),
                )
    write_master_dataset(rows.values(), root, segment=segment)
    return {"events": len(rows), "replays": replays}


def simulation_labels(
    sim_dir: Path, vehicle_of: Callable[[str], str | None] = pseudonym
) -> dict[str, set[str]]:
    """Ground truth: vehicle pseudonym -> the fraud kinds labelled on it (``noise`` excluded).

    ``vehicle_of`` maps a label's VIN to the pseudonym the views use: the
    stand-in :func:`pseudonym` for datasets built by :func:`master_from_simulation`,
    the identity vault's lookup (``IdentityVault.find_vehicle``) for data that
    came through the producers; a VIN it does not know is skipped.
    """
    truth: dict[str, set[str]] = {}
    for vehicle, label in simulation_label_rows(sim_dir, vehicle_of):
        kinds = truth.setdefault(vehicle, set())
        if label["kind"] != "noise":
            kinds.add(label["kind"])
    return truth


def simulation_label_rows(
    sim_dir: Path, vehicle_of: Callable[[str], str | None] = pseudonym
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(vehicle pseudonym, label) for each line of ``labels.jsonl`` whose VIN ``vehicle_of`` knows."""
    import orjson

    with open(sim_dir / "labels.jsonl", "rb") as fh:
        for line in fh:
            label = orjson.loads(line)
            vehicle = vehicle_of(label["vin"])
            if vehicle is not None:
                yield vehicle, label
