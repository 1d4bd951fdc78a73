"""Event contracts: the envelope, its versioned JSON Schemas, strict parsing and validation.

See docs/events.md (formats, examples) and docs/contracts.md (what the layers agreed).
"""

from pipelines.events.categories import (
    CATEGORIES,
    PROTECTED_CATEGORIES,
    PUBLIC_CATEGORIES,
    field_categories,
    top_level_categories,
)
from pipelines.events.envelope import (
    EVENT_TYPES,
    OWNER_PSEUDONYM,
    VEHICLE_PSEUDONYM,
    Envelope,
    EventType,
    ProducerInput,
    Proof,
    event_id_ms,
    format_time,
    new_event_id,
    now_ms,
    parse_time,
    parse_time_ms,
    utc_ms,
)
from pipelines.events.parsing import MAX_SAFE_INTEGER, parse_event
from pipelines.events.registry import latest_version, list_schemas, load_schema, schema_text, schema_versions
from pipelines.events.validation import (
    DEFAULT_FUTURE_TOLERANCE_S,
    Problem,
    require_valid,
    validate_envelope,
    validate_input,
    validate_payload,
)

__all__ = [
    "CATEGORIES",
    "DEFAULT_FUTURE_TOLERANCE_S",
    "EVENT_TYPES",
    "MAX_SAFE_INTEGER",
    "OWNER_PSEUDONYM",
    "PROTECTED_CATEGORIES",
    "PUBLIC_CATEGORIES",
    "VEHICLE_PSEUDONYM",
    "Envelope",
    "EventType",
    "Problem",
    "ProducerInput",
    "Proof",
    "event_id_ms",
    "field_categories",
    "format_time",
    "latest_version",
    "list_schemas",
    "load_schema",
    "new_event_id",
    "now_ms",
    "parse_event",
    "parse_time",
    "parse_time_ms",
    "require_valid",
    "schema_text",
    "schema_versions",
    "top_level_categories",
    "utc_ms",
    "validate_envelope",
    "validate_input",
    "validate_payload",
]
