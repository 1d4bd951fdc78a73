"""The master dataset: the immutable, append-only record the batch layer rebuilds from.

The speed layer writes it, the batch layer reads it, the serving layer reads
the real-time view that has the same columns.  One schema, defined here.

Layout: ``<root>/bucket=NNN/<segment>.parquet`` (vehicle buckets, see "layout" below), or
the older ``<root>/event_date=YYYY-MM-DD/<segment>.parquet``.  Files are written under a
temporary name and renamed; only compaction replaces a bucket's files by one holding the same rows.  Rows are unique by
``event_id`` across the whole dataset (writers are idempotent by event id).

Privacy (docs/access.md): protected payload fields (owner identity, precise
location, commercial details) are sealed inside ``payload``; no column holds
them in plain text.  ``lat``/``lon`` are the public *region* of the event:
the location rounded to :data:`REGION_DECIMALS` decimal places (0.1 degree,
about 11 km), enough for the "same vehicle in two distant places" rule.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

#: Fraud flags a rule can raise (pipelines/rules/fraud.py); kept here so that
#: every layer validates the same vocabulary.
FRAUD_FLAGS: tuple[str, ...] = (
    "odometer_rollback",  # reading lower than the last verified one
    "implausible_rate",  # km/day between two readings beyond what a car does
    "activity_after_wreck",  # any event after a total-loss declaration
    "impossible_travel",  # same vehicle in two distant places too quickly
    "interleaved_odometers",  # readings switching between two odometer series that each go on (a clone)
    "duplicate_event",  # an event id seen before (replay)
    "gradual_clocking",  # batch only: mileage rate dropping below the car's own trend
    "rollback_before_sale",  # batch only: rollback shortly before an ownership change
)

#: Decimal places ``lat``/``lon`` keep (0.1 degree, about 11 km): a region, not a place.
REGION_DECIMALS = 1


def region(value: float | None) -> float | None:
    """A latitude or longitude as the public region column keeps it (rounded to 0.1 degree)."""
    return None if value is None else round(float(value), REGION_DECIMALS)


#: Verification outcomes of an event's inclusion proof.
VERIFICATION_STATUSES: tuple[str, ...] = ("verified", "unverified")

MASTER_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("vehicle", pa.string(), nullable=False),
        pa.field("event_time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("ingestion_time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("processed_time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("odometer_km", pa.int64()),
        pa.field("lat", pa.float64()),  # region: location latitude rounded to 0.1 degree (region())
        pa.field("lon", pa.float64()),  # region: location longitude rounded to 0.1 degree
        # canonical JSON (RFC 8785) of the payload, protected fields sealed (enc:v1 tokens)
        pa.field("payload", pa.string(), nullable=False),
        # proof
        pa.field("leaf_hash", pa.string(), nullable=False),  # hex
        pa.field("log_index", pa.int64(), nullable=False),
        pa.field("tree_size", pa.int64(), nullable=False),
        pa.field("root", pa.string(), nullable=False),  # hex
        # the RFC 6962 audit path the producer published with the event (hex), leaf to root
        pa.field("proof_path", pa.list_(pa.string())),
        pa.field("verification", pa.string(), nullable=False),  # VERIFICATION_STATUSES
        # quality index and its components, each in [0, 1]
        pa.field("quality", pa.float64(), nullable=False),
        pa.field("q_source", pa.float64(), nullable=False),
        pa.field("q_proof", pa.float64(), nullable=False),
        pa.field("q_consistency", pa.float64(), nullable=False),
        pa.field("q_timeliness", pa.float64(), nullable=False),
        pa.field("q_completeness", pa.float64(), nullable=False),
        pa.field("flags", pa.list_(pa.string()), nullable=False),  # FRAUD_FLAGS raised in real time
        # where it came from
        pa.field("topic", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("event_date", pa.string(), nullable=False),  # partition column, YYYY-MM-DD of event_time
    ]
)

MASTER_COLUMNS: tuple[str, ...] = tuple(MASTER_SCHEMA.names)

# --- layout -------------------------------------------------------------------------------------
#
# Two layouts exist.  The *vehicle-bucket* layout (``<root>/bucket=NNN/part-*.parquet``, declared
# by ``<root>/_layout.json``) clusters each vehicle's events: bucket ``b`` of ``B`` holds the
# vehicles whose pseudonym's first six hex digits fall in the ``b``-th slice of ``[0, 16**6)``,
# and every file is sorted by ``(vehicle, event_time)``.  The older *date* layout
# (``<root>/event_date=YYYY-MM-DD/*.parquet``, no layout file) is read until
# ``pcc batch migrate-master`` rewrites it once.

#: The layout file at the master dataset's root; its presence switches readers to buckets.
LAYOUT_FILE = "_layout.json"
#: Vehicle buckets of a new master dataset unless ``batch.master_buckets`` says otherwise.
DEFAULT_BUCKETS = 64
_HEX_DIGITS = 6
_HEX_SPAN: int = 16**_HEX_DIGITS


def bucket_of(vehicle: str, buckets: int) -> int:
    """The bucket of a pseudonym (``v-`` + hex); anything else goes to bucket 0."""
    digits = vehicle[2 : 2 + _HEX_DIGITS]
    try:
        value = int(digits, 16) if len(digits) == _HEX_DIGITS else 0
    except ValueError:
        value = 0
    return min(value * buckets // _HEX_SPAN, buckets - 1)


def bucket_dir(bucket: int) -> str:
    return f"bucket={bucket:03d}"


def bucket_indices(vehicles: pa.ChunkedArray | pa.Array, buckets: int) -> pa.Array:
    """Each row's bucket (int32), computed once per distinct vehicle."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(vehicles)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = (
            encoded.combine_chunks()
            if encoded.num_chunks
            else pa.array([], pa.dictionary(pa.int32(), pa.string()))
        )
    per_value = pa.array([bucket_of(v, buckets) for v in encoded.dictionary.to_pylist()], pa.int32())
    return per_value.take(encoded.indices)


def split_by_bucket(table: pa.Table, buckets: int) -> list[tuple[int, pa.Table]]:
    """``(bucket, its rows sorted by vehicle then event time)`` in bucket order."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return []
    ids = bucket_indices(table.column("vehicle"), buckets)
    table = table.append_column("__bucket", ids)
    table = table.sort_by([("__bucket", "ascending"), ("vehicle", "ascending"), ("event_time", "ascending")])
    runs = pc.run_end_encode(table.column("__bucket").combine_chunks())
    table = table.drop_columns(["__bucket"])
    out: list[tuple[int, pa.Table]] = []
    start = 0
    for end, bucket in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
        out.append((int(bucket), table.slice(start, end - start)))
        start = end
    return out


def read_layout(root: Path) -> int | None:
    """The bucket count a master dataset is laid out in, or ``None`` for the date layout."""
    import json

    path = root / LAYOUT_FILE
    if not path.exists():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    return int(doc["buckets"])


def write_layout(root: Path, buckets: int) -> None:
    """Declare the bucket layout (atomically: readers switch layout at the rename)."""
    import json

    from pipelines.files import atomic_write

    if buckets < 1:
        raise ValueError(f"a master dataset needs at least one vehicle bucket, got {buckets}")
    root.mkdir(parents=True, exist_ok=True)
    doc = {"layout": "vehicle_buckets", "buckets": buckets, "sorted_by": ["vehicle", "event_time"]}
    atomic_write(root / LAYOUT_FILE, json.dumps(doc) + "\n")


def master_files(root: Path) -> list[Path]:
    """Every committed file of a master dataset, in the layout it declares."""
    if not root.exists():
        return []
    pattern = "bucket=*/*.parquet" if read_layout(root) is not None else "event_date=*/*.parquet"
    return sorted(f for f in root.glob(pattern) if not f.name.startswith((".", "_")))
