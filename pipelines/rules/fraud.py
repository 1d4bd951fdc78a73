"""Fraud rules as pure functions, shared by the speed layer and the batch layer.

The speed layer keeps one :class:`VehicleState` per vehicle and calls
:func:`check_event` for each event; the batch layer calls :func:`history_check`
over a vehicle's whole history, which applies the very same :func:`check_event`
in order, so the two layers cannot disagree on an in-order stream.

Order
-----
Events are applied in :func:`sort_key` order: ``(event_time, source_id,
log_index, event_id)``.  Sorting a set of events by this key and applying them
gives the same flags whatever order they arrived in (a property test checks it).
What the caller guarantees:

* the batch layer passes a vehicle's whole history (any order; it is sorted here);
* the speed layer applies, per vehicle, the events it has buffered sorted by
  :func:`sort_key` (:func:`apply_sorted` does it).  An event whose key is
  *older* than the last one applied to the state is *late*: it is checked only
  by the rules that stay sound without its neighbours in time (``duplicate_event``
  and ``activity_after_wreck``) and it changes only the wreck time (a late wreck
  declaration moves it earlier) and the seen ids.  Odometer, rate and travel
  checks need the readings just before and after it, which only the batch layer
  has; the batch result is authoritative.
* a replay has the same ``event_id`` and is appended to its source's log after
  the original (a higher ``log_index``), so the original is applied first and
  the replay is the one flagged.

Odometer readings are compared with a *reference* (the last trusted verified
reading).  A reading that contradicts it is flagged and kept as a *candidate*;
if the next reading agrees with the candidate rather than the reference, the
odometer really moved (a wind-back or a swapped cluster) and the candidate
becomes the reference without a second flag; if it agrees with the reference,
the candidate was a one-off (a typo) and is dropped.  Each jump is flagged once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from pipelines.errors import PccValueError

DAY_MS = 86_400_000
Evidence = dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class FraudParams:
    """Thresholds of the rules (documented defaults)."""

    rollback_tolerance_km: int = 50  # reading noise between sources
    max_km_per_day: float = 2_000.0  # within one day, a car cannot do more ...
    sustained_km_per_day: float = 1_000.0  # ... nor keep up more than this day after day
    jump_slack_km: float = 300.0  # allowed on top of the rate over short intervals
    max_speed_kmh: float = 250.0
    min_travel_km: float = 50.0  # below this, location noise, never impossible travel
    recent_ids: int = 16  # ids remembered per vehicle for duplicate detection
    sale_window_days: int = 90  # rollback_before_sale: how long before a sale
    clocking_ratio: float = 0.5  # gradual_clocking: rate after / rate before below this
    clocking_min_span_days: int = 120  # ... each side of the change spans at least this
    clocking_min_rate: float = 8.0  # ... km/day before the change, else too little signal


DEFAULT_PARAMS = FraudParams()


class EventFields(NamedTuple):
    """What the rules read from an event (a master-dataset row or an envelope)."""

    event_id: str
    event_type: str
    event_time_ms: int
    source_id: str = ""
    log_index: int = 0
    odometer_km: int | None = None
    lat: float | None = None
    lon: float | None = None
    verified: bool = True
    tier: int | None = None  # the source's quality tier, when the caller knows it


def sort_key(e: EventFields) -> tuple[int, str, int, str]:
    """The order in which events are applied: event time, then source, log position, id."""
    return (e.event_time_ms, e.source_id, e.log_index, e.event_id)


def _time_ms(value: object, event_id: str) -> int:
    if isinstance(value, bool):
        raise PccValueError(f"event {event_id}: event_time must be a time, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise PccValueError(f"event {event_id}: event_time has no time zone")
        return round(value.timestamp() * 1000)
    if isinstance(value, str):
        try:
            return round(dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            pass
    raise PccValueError(f"event {event_id}: event_time {value!r} is not an RFC 3339 time")


def fields_from(
    event: Mapping[str, Any], log_index: int | None = None, tier: int | None = None
) -> EventFields:
    """:class:`EventFields` from an envelope (``payload`` dict, ``proof``) or a master-dataset row."""
    event_id = str(event.get("event_id", ""))
    payload = event.get("payload")
    if isinstance(payload, Mapping):
        odo, loc = payload.get("odometer_km"), payload.get("location") or {}
        lat, lon = loc.get("lat"), loc.get("lon")
    else:
        odo, lat, lon = event.get("odometer_km"), event.get("lat"), event.get("lon")
    if log_index is None:
        proof = event.get("proof")
        log_index = (
            int(proof["log_index"]) if isinstance(proof, Mapping) else int(event.get("log_index") or 0)
        )
    return EventFields(
        event_id=event_id,
        event_type=str(event.get("event_type", "")),
        event_time_ms=_time_ms(event.get("event_time"), event_id),
        source_id=str(event.get("source_id", "")),
        log_index=log_index,
        odometer_km=None if odo is None else int(odo),
        lat=None if lat is None else float(lat),
        lon=None if lon is None else float(lon),
        verified=event.get("verification", "verified") == "verified",
        tier=tier,
    )


@dataclass(frozen=True, slots=True)
class VehicleState:
    """What the speed layer remembers per vehicle (about 0.5 kB in CPython)."""

    last_key: tuple[int, str, int, str] | None = None  # sort key of the last applied event
    ref_km: int | None = None  # last trusted verified odometer reading ...
    ref_ms: int = 0  # ... and its time
    cand_km: int | None = None  # a contradicting reading waiting for confirmation ...
    cand_ms: int = 0
    lat: float | None = None  # last verified location ...
    lon: float | None = None
    loc_ms: int = 0
    wreck_ms: int | None = None  # earliest total-loss declaration
    recent: bytes = b""  # 8-byte digests of the last ``recent_ids`` event ids


EMPTY_STATE = VehicleState()


def _digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode(), digest_size=8).digest()


def _seen(recent: bytes, digest: bytes) -> bool:
    at = recent.find(digest)
    while at != -1:
        if at % 8 == 0:
            return True
        at = recent.find(digest, at + 1)
    return False


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 12_742.0 * math.asin(min(1.0, math.sqrt(a)))


def _odometer_problem(
    km: int, t: int, ref_km: int, ref_ms: int, p: FraudParams
) -> tuple[str, dict[str, Any]] | None:
    days = max(t - ref_ms, 0) / DAY_MS
    if ref_km - km > p.rollback_tolerance_km:
        return "odometer_rollback", {
            "previous_km": ref_km,
            "previous_time_ms": ref_ms,
            "drop_km": ref_km - km,
        }
    allowed = (
        p.jump_slack_km + p.max_km_per_day * min(days, 1.0) + p.sustained_km_per_day * max(days - 1.0, 0.0)
    )
    if km - ref_km > allowed:
        rate = (km - ref_km) / max(days, 1 / 24)
        return "implausible_rate", {
            "previous_km": ref_km,
            "previous_time_ms": ref_ms,
            "km_per_day": round(rate),
        }
    return None


def check_event(
    state: VehicleState, event: EventFields, params: FraudParams = DEFAULT_PARAMS
) -> tuple[VehicleState, tuple[str, ...], Evidence]:
    """Apply one event to a vehicle's state: the new state, the flags raised and their evidence."""
    digest = _digest(event.event_id)
    if _seen(state.recent, digest):
        return state, ("duplicate_event",), {"duplicate_event": {"event_id": event.event_id}}
    flags: list[str] = []
    evidence: Evidence = {}
    t = event.event_time_ms
    key = sort_key(event)
    late = state.last_key is not None and key < state.last_key
    changes: dict[str, Any] = {"recent": (state.recent + digest)[-8 * params.recent_ids :]}
    if not late:
        changes["last_key"] = key
    if state.wreck_ms is not None and t > state.wreck_ms:
        flags.append("activity_after_wreck")
        evidence["activity_after_wreck"] = {
            "wreck_time_ms": state.wreck_ms,
            "days_after": (t - state.wreck_ms) / DAY_MS,
        }
    if event.verified and event.event_type == "wreck_declaration":
        changes["wreck_ms"] = t if state.wreck_ms is None else min(t, state.wreck_ms)
    km = event.odometer_km
    if not late and km is not None:
        if state.ref_km is None:
            problem = None
        else:
            problem = _odometer_problem(km, t, state.ref_km, state.ref_ms, params)
        if problem is None:
            if event.verified:
                changes.update(ref_km=km, ref_ms=t, cand_km=None)
        elif (
            state.cand_km is not None
            and _odometer_problem(km, t, state.cand_km, state.cand_ms, params) is None
        ):  # the candidate is confirmed: the odometer really moved, already flagged once
            if event.verified:
                changes.update(ref_km=km, ref_ms=t, cand_km=None)
        else:
            flag, detail = problem
            flags.append(flag)
            evidence[flag] = {**detail, "odometer_km": km}
            if event.verified:
                changes.update(cand_km=km, cand_ms=t)
    if not late and event.lat is not None and event.lon is not None:
        if state.lat is not None and state.lon is not None:
            distance = haversine_km(state.lat, state.lon, event.lat, event.lon)
            hours = (t - state.loc_ms) / 3_600_000
            if distance > params.min_travel_km and (hours <= 0 or distance / hours > params.max_speed_kmh):
                flags.append("impossible_travel")
                evidence["impossible_travel"] = {
                    "distance_km": round(distance, 1),
                    "hours": round(hours, 3),
                    "previous_time_ms": state.loc_ms,
                }
        if event.verified:
            changes.update(lat=event.lat, lon=event.lon, loc_ms=t)
    if event.tier is not None:
        for detail in evidence.values():
            detail["tier"] = event.tier
    return replace(state, **changes), tuple(flags), evidence


def apply_sorted(
    state: VehicleState, events: Iterable[EventFields], params: FraudParams = DEFAULT_PARAMS
) -> tuple[VehicleState, list[tuple[EventFields, tuple[str, ...], Evidence]]]:
    """Apply a batch of one vehicle's events in :func:`sort_key` order (what the speed layer buffers)."""
    out = []
    for event in sorted(events, key=sort_key):
        state, flags, evidence = check_event(state, event, params)
        out.append((event, flags, evidence))
    return state, out


class Checked(NamedTuple):
    """One event of a history with its flags and their evidence."""

    event: EventFields
    flags: tuple[str, ...]
    evidence: Evidence


def history_check(events: Iterable[EventFields], params: FraudParams = DEFAULT_PARAMS) -> list[Checked]:
    """Apply :func:`check_event` over a vehicle's whole history, in :func:`sort_key` order."""
    _, applied = apply_sorted(EMPTY_STATE, events, params)
    return [Checked(e, f, ev) for e, f, ev in applied]


def history_flags(
    events: Iterable[EventFields], params: FraudParams = DEFAULT_PARAMS
) -> list[tuple[str, tuple[str, ...]]]:
    """``(event_id, flags)`` for each event of a history, in :func:`sort_key` order."""
    return [(c.event.event_id, c.flags) for c in history_check(events, params)]


# -- batch-only rules: they need the whole history ---------------------------------


def rollback_before_sale(
    checked: Sequence[Checked], params: FraudParams = DEFAULT_PARAMS
) -> list[tuple[str, Evidence]]:
    """Ownership changes preceded (within ``sale_window_days``, sale included) by an odometer rollback."""
    window = params.sale_window_days * DAY_MS
    rollbacks = [c for c in checked if "odometer_rollback" in c.flags]
    out: list[tuple[str, Evidence]] = []
    for sale in checked:
        if sale.event.event_type != "ownership_change" or "duplicate_event" in sale.flags:
            continue
        t = sale.event.event_time_ms
        before = [r for r in rollbacks if t - window <= r.event.event_time_ms <= t]
        if before:
            r = max(before, key=lambda c: c.evidence["odometer_rollback"]["drop_km"])
            detail = {
                "rollback_event_id": r.event.event_id,
                "drop_km": r.evidence["odometer_rollback"]["drop_km"],
                "days_before_sale": round((t - r.event.event_time_ms) / DAY_MS, 1),
            }
            out.append((sale.event.event_id, {"rollback_before_sale": detail}))
    return out


def gradual_clocking(
    checked: Sequence[Checked], params: FraudParams = DEFAULT_PARAMS
) -> list[tuple[str, Evidence]]:
    """The car's mileage rate dropping well below its own earlier rate.

    Uses the trusted readings (verified, not themselves flagged), finds the
    split point where ``rate after / rate before`` is lowest with at least
    ``clocking_min_span_days`` on each side and two readings after it, and
    flags the latest reading when that ratio is below ``clocking_ratio``.  A
    car with a connected-car operator shows clocking as rollbacks against the
    telematics readings instead (the garage readings fall below the reference).
    """
    points: list[tuple[int, int, str]] = []
    for c in checked:
        e = c.event
        if e.odometer_km is None or not e.verified or c.flags:
            continue
        if points and e.event_time_ms - points[-1][0] < DAY_MS:
            continue
        points.append((e.event_time_ms, e.odometer_km, e.event_id))
    span = params.clocking_min_span_days * DAY_MS
    best: tuple[float, float, float, int] | None = None
    t0, km0, _ = points[0] if points else (0, 0, "")
    for i in range(1, len(points) - 2):
        ti, kmi, _ = points[i]
        tn, kmn, _ = points[-1]
        if ti - t0 < span or tn - ti < span:
            continue
        before = (kmi - km0) / ((ti - t0) / DAY_MS)
        after = (kmn - kmi) / ((tn - ti) / DAY_MS)
        if before < params.clocking_min_rate:
            continue
        ratio = after / before
        if best is None or ratio < best[0]:
            best = (ratio, before, after, ti)
    if best is None or best[0] >= params.clocking_ratio:
        return []
    ratio, before, after, since = best
    detail = {
        "km_per_day_before": round(before, 1),
        "km_per_day_after": round(after, 1),
        "ratio": round(ratio, 3),
        "since_time_ms": since,
    }
    return [(points[-1][2], {"gradual_clocking": detail})]


#: How much one flagged event weighs in the score (a probability-like strength).
FLAG_WEIGHTS: dict[str, float] = {
    "rollback_before_sale": 0.8,
    "activity_after_wreck": 0.6,
    "gradual_clocking": 0.5,
    "odometer_rollback": 0.4,
    "impossible_travel": 0.35,
    "implausible_rate": 0.2,
    "duplicate_event": 0.15,
}
#: Evidence from low-tier sources (manual entry) counts for less.
TIER_FACTOR: dict[int, float] = {1: 1.0, 2: 1.0, 3: 0.8, 4: 0.5}
SUSPICIOUS_AT = 0.35
FRAUDULENT_AT = 0.7


class Score(NamedTuple):
    score: float  # in [0, 1]
    reasons: tuple[str, ...]  # strongest first, e.g. "odometer_rollback x2 (drop 41,200 km)"
    label: str  # clean | suspicious | fraudulent


def fraud_score(flags_with_evidence: Iterable[tuple[Sequence[str], Evidence]]) -> Score:
    """Combine per-event flags into a vehicle score.

    Each flagged event is independent evidence of strength ``FLAG_WEIGHTS[flag]``
    (times ``TIER_FACTOR`` of its source when known); the score is
    ``1 - prod(1 - strength)`` with at most three events counted per flag, so
    one typo gives a suspicion, not a verdict.  Labels: ``fraudulent`` from
    0.7, ``suspicious`` from 0.35, else ``clean``.
    """
    strengths: dict[str, list[float]] = {}
    drops: dict[str, int] = {}
    for flags, evidence in flags_with_evidence:
        for flag in flags:
            if flag not in FLAG_WEIGHTS:
                raise PccValueError(f"unknown fraud flag {flag!r}; expected one of {sorted(FLAG_WEIGHTS)}")
            detail = evidence.get(flag, {})
            tier = detail.get("tier")
            factor = TIER_FACTOR.get(int(tier), 0.5) if tier is not None else 1.0
            strengths.setdefault(flag, []).append(FLAG_WEIGHTS[flag] * factor)
            if "drop_km" in detail:
                drops[flag] = max(drops.get(flag, 0), int(detail["drop_km"]))
    keep = 1.0
    parts: list[tuple[float, str]] = []
    for flag, values in strengths.items():
        top = sorted(values, reverse=True)[:3]
        flag_keep = math.prod(1.0 - s for s in top)
        keep *= flag_keep
        reason = flag if len(values) == 1 else f"{flag} x{len(values)}"
        if flag in drops:
            reason += f" (drop {drops[flag]:,} km)"
        parts.append((1.0 - flag_keep, reason))
    score = min(1.0, max(0.0, 1.0 - keep))
    label = "fraudulent" if score >= FRAUDULENT_AT else "suspicious" if score >= SUSPICIOUS_AT else "clean"
    reasons = tuple(r for _, r in sorted(parts, key=lambda p: (-p[0], p[1])))
    return Score(round(score, 6), reasons, label)


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
    ``duplicate_event`` of a replay the master dataset stored once) are merged in.
    """
    checked = history_check(events, params)
    extra: dict[str, Evidence] = {}
    for event_id, evidence in [*rollback_before_sale(checked, params), *gradual_clocking(checked, params)]:
        extra.setdefault(event_id, {}).update(evidence)
    merged = []
    for c in checked:
        flags, evidence = list(c.flags), dict(c.evidence)
        for flag, detail in extra.get(c.event.event_id, {}).items():
            flags.append(flag)
            evidence[flag] = detail
        for flag in (stream_flags or {}).get(c.event.event_id, ()):
            if flag not in flags:
                flags.append(flag)
                evidence.setdefault(flag, {"raised_by": "stream"})
        merged.append(Checked(c.event, tuple(flags), evidence))
    return Assessment(merged, fraud_score((c.flags, c.evidence) for c in merged))
