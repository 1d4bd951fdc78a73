"""Fraud rules as pure functions, shared by the speed layer and the batch layer.

* :mod:`pipelines.rules.stream`: the per-event rules.  The speed layer keeps one
  :class:`VehicleState` per vehicle and calls :func:`check_event` per event
  (:func:`apply_sorted` for a buffered batch); the batch layer applies the very
  same function over a vehicle's whole history (:func:`history_check`), so the
  two layers cannot disagree on an in-order stream.  The ordering contract is
  documented there.
* :mod:`pipelines.rules.history`: batch-only rules that need the whole history
  (the standing of each odometer flag, rollback before a sale, gradual clocking).
* :mod:`pipelines.rules.scoring`: the vehicle score and label.

:func:`assess_vehicle` is what the batch layer calls per vehicle; this module
re-exports everything both layers use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from pipelines.rules.chains import haversine_km
from pipelines.rules.history import (
    ODOMETER_FLAGS,
    fleet_days,
    fleet_profile,
    gradual_clocking,
    odometer_standing,
    profile_from_sums,
    profile_sums,
    repeated_drops,
    rollback_before_sale,
)
from pipelines.rules.scoring import (
    FLAG_WEIGHTS,
    FRAUDULENT_AT,
    STANDING_FACTOR,
    SUSPICIOUS_AT,
    TIER_FACTOR,
    Score,
    fraud_score,
    strength,
)
from pipelines.rules.stream import (
    DAY_MS,
    DEFAULT_PARAMS,
    EMPTY_STATE,
    Checked,
    EventFields,
    Evidence,
    FraudParams,
    VehicleState,
    apply_sorted,
    check_event,
    fields_from,
    history_check,
    history_flags,
    odometer_problem,
    sort_key,
)

__all__ = [
    "DAY_MS",
    "DEFAULT_PARAMS",
    "EMPTY_STATE",
    "FLAG_WEIGHTS",
    "FRAUDULENT_AT",
    "ODOMETER_FLAGS",
    "STANDING_FACTOR",
    "SUSPICIOUS_AT",
    "TIER_FACTOR",
    "Assessment",
    "Checked",
    "EventFields",
    "Evidence",
    "FraudParams",
    "Score",
    "VehicleState",
    "apply_sorted",
    "assess_vehicle",
    "check_event",
    "fields_from",
    "fleet_days",
    "fleet_profile",
    "fraud_score",
    "gradual_clocking",
    "haversine_km",
    "history_check",
    "history_flags",
    "odometer_problem",
    "odometer_standing",
    "profile_from_sums",
    "profile_sums",
    "repeated_drops",
    "rollback_before_sale",
    "sort_key",
    "strength",
]


class Assessment(NamedTuple):
    checked: list[Checked]  # every event in sort_key order, stream and batch flags merged
    score: Score


def assess_vehicle(
    events: Iterable[EventFields],
    stream_flags: Mapping[str, Sequence[str]] | None = None,
    params: FraudParams = DEFAULT_PARAMS,
) -> Assessment:
    """Everything the batch layer needs for one vehicle: per-event flags and the score.

    ``stream_flags`` (event id -> flags the speed layer raised, e.g. the
    ``duplicate_event`` of a replay the master dataset stored once) are merged
    in.  Each odometer flag's evidence gains its ``standing`` in the whole
    history (:func:`odometer_standing`), which sets how much it weighs.
    """
    checked = history_check(events, params)
    standing = odometer_standing(checked, params)
    extra: dict[str, Evidence] = {}
    clone = any("interleaved_odometers" in c.flags for c in checked)  # two odometers: no one rate to measure
    for event_id, evidence in [
        *repeated_drops(checked, params, standing),
        *rollback_before_sale(checked, params, standing),
        *([] if clone else gradual_clocking(checked, params, standing)),
    ]:
        extra.setdefault(event_id, {}).update(evidence)
    merged = []
    stream = stream_flags or {}
    for c in checked:
        if not c.flags and c.event.event_id not in extra and c.event.event_id not in stream:
            merged.append(c)  # nothing to add (most events): its evidence is its own, empty
            continue
        flags = list(c.flags)
        evidence = {flag: dict(detail) for flag, detail in c.evidence.items()}
        if c.event.event_id in standing:
            for flag in ODOMETER_FLAGS & set(flags):
                evidence[flag]["standing"] = standing[c.event.event_id]
        for flag, detail in extra.get(c.event.event_id, {}).items():
            flags.append(flag)
            evidence[flag] = detail
        for flag in stream.get(c.event.event_id, ()):
            if flag not in flags:
                flags.append(flag)
                evidence.setdefault(flag, {"raised_by": "stream"})
        merged.append(Checked(c.event, tuple(flags), evidence))
    return Assessment(merged, fraud_score(((c.flags, c.evidence) for c in merged), params))
