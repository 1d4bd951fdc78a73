"""The quality index of an event: how much a reader should trust it, in [0, 1].

A pure function of what the speed layer knows when the event arrives (and the
batch layer when it rebuilds), so both compute the same numbers.  The index is
a weighted mean of five components, the columns ``q_*`` of
``pipelines.dataset.MASTER_SCHEMA``:

============== ====== ==============================================================
component      weight meaning
============== ====== ==============================================================
q_source       0.30   the source's tier (1 best .. 4) blended 60/40 with its reputation
q_proof        0.25   1 when the inclusion proof verified against an anchored root, else 0
q_consistency  0.25   the caller's consistency with the vehicle's history (see
                      :func:`consistency_from_flags`)
q_timeliness   0.10   1 up to 5 minutes between event and ingestion, then halving every 3 days
q_completeness 0.10   share of the payload's optional fields present (:func:`completeness`)
============== ====== ==============================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from pipelines.errors import PccValueError

WEIGHTS: dict[str, float] = {
    "q_source": 0.30,
    "q_proof": 0.25,
    "q_consistency": 0.25,
    "q_timeliness": 0.10,
    "q_completeness": 0.10,
}
TIER_SCORE: dict[int, float] = {1: 1.0, 2: 0.8, 3: 0.6, 4: 0.4}
TIMELINESS_GRACE_S = 300.0
TIMELINESS_HALF_LIFE_S = 3 * 86_400.0
#: How much a flag on the event lowers its consistency (the strongest one counts).
FLAG_PENALTY: dict[str, float] = {
    "odometer_rollback": 0.8,
    "activity_after_wreck": 0.8,
    "rollback_before_sale": 0.8,
    "impossible_travel": 0.6,
    "interleaved_odometers": 0.6,
    "implausible_rate": 0.6,
    "gradual_clocking": 0.5,
    "duplicate_event": 0.3,
}


def _unit(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise PccValueError(f"quality: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def timeliness(ingestion_delay_s: float) -> float:
    """1 within the grace period, then halving every ``TIMELINESS_HALF_LIFE_S`` (negative = on time)."""
    if (
        isinstance(ingestion_delay_s, bool)
        or not isinstance(ingestion_delay_s, int | float)
        or math.isnan(ingestion_delay_s)
    ):
        raise PccValueError(
            f"quality: ingestion_delay_s must be a number of seconds, got {ingestion_delay_s!r}"
        )
    late = max(0.0, float(ingestion_delay_s) - TIMELINESS_GRACE_S)
    return math.pow(0.5, late / TIMELINESS_HALF_LIFE_S)


def consistency_from_flags(flags: Iterable[str]) -> float:
    """1 for an event no rule flagged, lowered by its strongest flag."""
    penalty = 0.0
    for flag in flags:
        if flag not in FLAG_PENALTY:
            raise PccValueError(f"quality: unknown fraud flag {flag!r}")
        penalty = max(penalty, FLAG_PENALTY[flag])
    return 1.0 - penalty


@cache
def optional_fields(event_type: str, schema_version: int = 1) -> tuple[str, ...]:
    """The optional payload fields of an event type: its JSON Schema's properties minus ``required``."""
    from pipelines.events import load_schema  # the schemas are the single source of truth

    schema = load_schema(event_type, schema_version)
    required = set(schema.get("required", ()))
    return tuple(name for name in schema.get("properties", {}) if name not in required)


def completeness(event_type: str, payload: Mapping[str, Any], schema_version: int = 1) -> float:
    """Share of the event type's optional payload fields present (1 when it has none)."""
    fields = optional_fields(event_type, schema_version)
    if not fields:
        return 1.0
    return sum(1 for f in fields if payload.get(f) is not None) / len(fields)


def quality_index(
    source_tier: int,
    reputation: float,
    proof_verified: bool,
    consistency: float,
    ingestion_delay_s: float,
    completeness: float,
) -> tuple[float, dict[str, float]]:
    """The quality index and its components (see the module doc for weights)."""
    if source_tier not in TIER_SCORE:
        raise PccValueError(f"quality: source_tier must be one of 1, 2, 3, 4, got {source_tier!r}")
    components = {
        "q_source": 0.6 * TIER_SCORE[source_tier] + 0.4 * _unit("reputation", reputation),
        "q_proof": 1.0 if proof_verified else 0.0,
        "q_consistency": _unit("consistency", consistency),
        "q_timeliness": timeliness(ingestion_delay_s),
        "q_completeness": _unit("completeness", completeness),
    }
    index = sum(WEIGHTS[k] * v for k, v in components.items())
    return min(1.0, max(0.0, index)), components
