"""The master dataset: the immutable, append-only record the batch layer rebuilds from.

The speed layer writes it, the batch layer reads it, the serving layer reads
the real-time view that has the same columns.  One schema, defined here.

Layout: ``<root>/event_date=YYYY-MM-DD/<segment>.parquet``.  Files are written
under a temporary name and renamed, never rewritten.  Rows are unique by
``event_id`` across the whole dataset (writers are idempotent by event id).

Privacy (docs/access.md): protected payload fields (owner identity, precise
location, commercial details) are sealed inside ``payload``; no column holds
them in plain text.  ``lat``/``lon`` are the public *region* of the event:
the location rounded to :data:`REGION_DECIMALS` decimal places (0.1 degree,
about 11 km), enough for the "same vehicle in two distant places" rule.
"""

from __future__ import annotations

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
