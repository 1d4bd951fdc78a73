"""The per-event fraud rules: what the speed layer checks as each event arrives.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from pipelines.errors import PccValueError
from pipelines.rules.chains import CHAIN_PARAMS, EMPTY_TRACK, ChainParams, Step, Tracked, haversine_km, track

DAY_MS = 86_400_000
Evidence = dict[str, dict[str, Any]]
#: Two places closer than this in latitude and in longitude are less than 50 km apart (43 km at most).
NEAR_DEGREES = 0.3
NEAR_KM = 44.0
#: The flags of :func:`odometer_problem`.
ODOMETER_PROBLEMS = frozenset({"odometer_rollback", "implausible_rate"})


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
    sale_window_days: int = (
        270  # rollback_before_sale: how long before a sale (tuned, pipelines.simulator.tuning)
    )
    clocking_ratio: float = 0.6  # gradual_clocking: car's rate after / before over the fleet's (tuned)
    clocking_min_span_days: int = 60  # ... each side of the change spans at least this
    clocking_min_rate: float = 5.0  # ... km/day before the change, else too little signal
    clocking_daily_cv: float = 0.7  # ... how much a car's km vary from day to day (sd / mean)
    clocking_min_z: float = 4.0  # ... and the drop this many standard errors of it (tuned)
    #: gradual_clocking: the fleet's km/day in each twelfth of the year over its yearly mean
    #: (:func:`pipelines.rules.history.fleet_profile`); flat: every day counts the same.
    fleet_profile: tuple[float, ...] = (1.0,) * 12
    far_travel_km: float = 600.0  # impossible_travel counts fully from this distance (batch score)
    #: a record's time (a garage's, an inspection's, an insurer's: every event but an odometer reading)
    #: is when it was written, within this many hours of the car being at its place (impossible_travel)
    record_slack_h: float = 2.0
    #: interleaved_odometers (batch, signal repeated_drops): from this many odometer drops that the next
    #: reading undid (one-offs), they are not mistypes but two odometers near each other
    repeated_drops: int = 3
    chains: ChainParams = CHAIN_PARAMS  # interleaved_odometers: what one odometer series may do


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
    loc_record: bool = False  # ... from a record (its time within ``record_slack_h``), not a live reading
    wreck_ms: int | None = None  # earliest total-loss declaration
    recent: bytes = b""  # 8-byte digests of the last ``recent_ids`` event ids
    chains: Tracked = EMPTY_TRACK  # the odometer chains of the trusted readings (pipelines.rules.chains)


EMPTY_STATE = VehicleState()
_SET = tuple(getattr(VehicleState, f).__set__ for f in VehicleState.__dataclass_fields__)


def _state(
    last_key: tuple[int, str, int, str] | None,
    ref_km: int | None,
    ref_ms: int,
    cand_km: int | None,
    cand_ms: int,
    lat: float | None,
    lon: float | None,
    loc_ms: int,
    loc_record: bool,
    wreck_ms: int | None,
    recent: bytes,
    chains: Tracked,
) -> VehicleState:
    """``VehicleState(...)`` through its slots: a frozen dataclass's ``__init__`` costs twice as much,
    and this runs once for every event the speed layer takes."""
    s = object.__new__(VehicleState)
    a, b, c, d, e, f, g, h, r, i, j, k = _SET
    a(s, last_key), b(s, ref_km), c(s, ref_ms), d(s, cand_km), e(s, cand_ms), f(s, lat)
    g(s, lon), h(s, loc_ms), r(s, loc_record), i(s, wreck_ms), j(s, recent), k(s, chains)
    return s


def _digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode(), digest_size=8).digest()


def _seen(recent: bytes, digest: bytes) -> bool:
    at = recent.find(digest)
    while at != -1:
        if at % 8 == 0:
            return True
        at = recent.find(digest, at + 1)
    return False


def odometer_problem(
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


def check_event(  # noqa: C901, PLR0912 (the per-event hot path: a call per rule costs)
    state: VehicleState, event: EventFields, params: FraudParams = DEFAULT_PARAMS
) -> tuple[VehicleState, tuple[str, ...], Evidence]:
    """Apply one event to a vehicle's state: the new state, the flags raised and their evidence.

    The new state is built once from locals (no change dict, no per-field lookup): this runs
    for every event the speed layer takes.
    """
    digest = _digest(event.event_id)
    recent = state.recent
    if _seen(recent, digest):
        return state, ("duplicate_event",), {"duplicate_event": {"event_id": event.event_id}}
    last_key, ref_km, ref_ms, cand_km, cand_ms = (
        state.last_key,
        state.ref_km,
        state.ref_ms,
        state.cand_km,
        state.cand_ms,
    )
    lat, lon, loc_ms, wreck_ms, chains = state.lat, state.lon, state.loc_ms, state.wreck_ms, state.chains
    loc_record = state.loc_record
    flags: list[str] = []
    evidence: Evidence = {}
    t = event.event_time_ms
    key = (t, event.source_id, event.log_index, event.event_id)  # sort_key(event)
    late = last_key is not None and key < last_key
    if not late:
        last_key = key
    verified = event.verified
    if wreck_ms is not None and t > wreck_ms:
        flags.append("activity_after_wreck")
        evidence["activity_after_wreck"] = {"wreck_time_ms": wreck_ms, "days_after": (t - wreck_ms) / DAY_MS}
    if verified and event.event_type == "wreck_declaration":
        wreck_ms = t if wreck_ms is None else min(t, wreck_ms)
    km = event.odometer_km
    if not late and km is not None:
        problem = None if ref_km is None else odometer_problem(km, t, ref_km, ref_ms, params)
        if problem is None:
            if verified:
                ref_km, ref_ms, cand_km = km, t, None
        elif cand_km is not None and odometer_problem(km, t, cand_km, cand_ms, params) is None:
            # the candidate is confirmed: the odometer really moved, already flagged once
            if verified:
                ref_km, ref_ms, cand_km = km, t, None
        else:
            flag, detail = problem
            flags.append(flag)
            evidence[flag] = {**detail, "odometer_km": km}
            if verified:
                cand_km, cand_ms = km, t
    if km is not None and verified:  # late ones too: a chain reading is sound out of order
        step = track(chains, km, t, event.lat, event.lon, params.chains)
        chains = step.state
        if step.interleaved:  # the other series explains the jump: one flag, the clone's
            _interleaved(step, km, event, flags, evidence)
    if not late and event.lat is not None and event.lon is not None:
        if lat is not None and lon is not None:
            near = (
                params.min_travel_km >= NEAR_KM
                and abs(event.lat - lat) < NEAR_DEGREES
                and abs(event.lon - lon) < NEAR_DEGREES
            )  # within min_travel_km whatever the speed: no distance to compute
            if not near:
                _travel(lat, lon, loc_ms, loc_record, event, params, flags, evidence)
        if verified:
            lat, lon, loc_ms, loc_record = event.lat, event.lon, t, event.event_type != "odometer_reading"
    if event.tier is not None:
        for detail in evidence.values():
            detail["tier"] = event.tier
    recent = (recent + digest)[-8 * params.recent_ids :]
    new = _state(
        last_key, ref_km, ref_ms, cand_km, cand_ms, lat, lon, loc_ms, loc_record, wreck_ms, recent, chains
    )
    return new, tuple(flags), evidence


def _interleaved(step: Step, km: int, event: EventFields, flags: list[str], evidence: Evidence) -> None:
    """The reading switched between two persistent odometer chains: the clone's flag replaces the
    odometer problems the jump raised."""
    other = step.state.b if step.joined == 0 else step.state.a
    assert other is not None
    for f in ODOMETER_PROBLEMS.intersection(flags):
        flags.remove(f)
        del evidence[f]
    detail = {
        "odometer_km": km,
        "other_km": other.km,
        "other_time_ms": other.ms,
        "switches": step.state.switches,
        "signal": "odometer_chains",
    }
    if event.lat is not None and event.lon is not None and other.lat is not None and other.lon is not None:
        detail["distance_km"] = round(haversine_km(event.lat, event.lon, other.lat, other.lon))
    flags.append("interleaved_odometers")
    evidence["interleaved_odometers"] = detail


def _travel(
    lat: float,
    lon: float,
    loc_ms: int,
    loc_record: bool,
    event: EventFields,
    params: FraudParams,
    flags: list[str],
    evidence: Evidence,
) -> None:
    """``impossible_travel`` when the car got from the last verified place to this one too fast.

    A record's time (every event but an odometer reading: a garage's invoice, an inspection's
    report, an insurer's claim) is when it was written, so each record in the pair gives the car
    ``record_slack_h`` more hours."""
    assert event.lat is not None and event.lon is not None
    distance = haversine_km(lat, lon, event.lat, event.lon)
    hours = (event.event_time_ms - loc_ms) / 3_600_000
    slack = params.record_slack_h * (loc_record + (event.event_type != "odometer_reading"))
    if distance > params.min_travel_km and (
        hours + slack <= 0 or distance / (hours + slack) > params.max_speed_kmh
    ):
        flags.append("impossible_travel")
        evidence["impossible_travel"] = {
            "distance_km": round(distance, 1),
            "hours": round(hours, 3),
            "previous_time_ms": loc_ms,
        }


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
