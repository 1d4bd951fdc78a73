"""Batch-only fraud rules: they need a vehicle's whole history, before and after each event.

* :func:`odometer_standing` re-reads every odometer flag of :func:`check_event`
  with the readings that came *after* it, which the speed layer did not have:
  a one-off reading (a typo) that the next reading contradicts, a one-off
  reference that the flagged reading only seems to contradict, a jump the later
  readings follow (confirmed), or one nothing has followed yet (unconfirmed).
* :func:`repeated_drops`: from the third drop that the next reading undid, two
  odometers near each other (``interleaved_odometers``, ``signal: repeated_drops``).
* :func:`rollback_before_sale`: a sale preceded by a rollback that is not a one-off.
* :func:`gradual_clocking`: the car's mileage rate dropping well below its own
  earlier rate, measured on the increments between trusted readings so that a
  jump of the odometer (a rollback, a swapped cluster) does not count as a rate.

:func:`pipelines.rules.stream.check_event` flags stay as the speed layer raised
them; the standing only changes how much they weigh in the score
(:data:`pipelines.rules.scoring.STANDING_FACTOR`).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache, partial
from itertools import accumulate, pairwise

from pipelines.rules.chains import chain_ids
from pipelines.rules.stream import DAY_MS, DEFAULT_PARAMS, Checked, Evidence, FraudParams, odometer_problem

#: The per-event flags that say an odometer reading contradicts the history.
ODOMETER_FLAGS = frozenset({"odometer_rollback", "implausible_rate"})
#: Standings of an odometer flag that the rest of the history explains: a one-off error, or the
#: jump between the two odometers of a clone (``other_chain``).
ONE_OFF = frozenset({"one_off", "reference_one_off", "other_chain"})


def reading_chains(
    checked: Sequence[Checked], params: FraudParams = DEFAULT_PARAMS
) -> dict[tuple[int, int], int]:
    """``(time, km)`` of each trusted reading -> its odometer chain, when two chains interleave (else empty).

    The same assignment as the speed layer's (:func:`pipelines.rules.chains.track`
    over the verified readings in order); chain 0 is the one with the most
    readings, taken for the car's own.
    """
    if not any("interleaved_odometers" in c.flags for c in checked):
        return {}
    readings = [
        (c.event.event_time_ms, c.event.odometer_km, c.event.lat, c.event.lon)
        for c in checked
        if c.event.odometer_km is not None and c.event.verified and "duplicate_event" not in c.flags
    ]
    ids = chain_ids(readings, params.chains)
    sizes = Counter(i for i in ids if i >= 0)
    rank = {chain: n for n, (chain, _) in enumerate(sizes.most_common())}
    return {(t, km): rank.get(i, -1) for (t, km, _, _), i in zip(readings, ids, strict=True)}


def _odometer_flag(c: Checked) -> str | None:
    """The odometer flag the event carries (at most one: a rollback or an implausible rate), if any."""
    flags = c.flags
    if not flags:  # most events: no generator, no lookups
        return None
    if "odometer_rollback" in flags:
        return "odometer_rollback"
    return "implausible_rate" if "implausible_rate" in flags else None


def _agrees(km: int, t: int, ref_km: int, ref_ms: int, params: FraudParams) -> bool:
    return odometer_problem(km, t, ref_km, ref_ms, params) is None


def _reference_is_off(
    trusted: Sequence[tuple[int, int]],
    ref: tuple[int, int],
    flagged: tuple[int, int],
    params: FraudParams,
    later: Callable[[], tuple[int, int] | None] = lambda: None,
) -> bool:
    """Whether the flagged reading, not its reference, continues the readings before the reference.

    The flagged reading must agree with the last trusted reading before the
    reference and lie closer than the reference to where the car's rate puts
    it from there: the rate of the readings before, or, when they show none
    (one reading), the car's pace from the flagged reading to ``later()`` (a
    verified reading at least ``LATER_DAYS`` on, looked for only then). With no rate at all, the
    reference is taken for the one-off.
    """
    (t0, km0), (t, km) = trusted[-1], flagged
    if not _agrees(km, t, km0, t0, params):
        return False
    first = next((p for p in trusted if t0 - p[0] >= DAY_MS), None)
    after = None if first is not None else later()
    if first is not None:
        rate = (km0 - first[1]) / (t0 - first[0])
    elif after is not None:
        rate = (after[1] - km) / (after[0] - t)
    else:
        return True

    def residual(p: tuple[int, int]) -> float:
        return abs(p[1] - (km0 + rate * (p[0] - t0)))

    return residual(flagged) < residual(ref)


#: The car's pace after a flagged reading is measured to a verified reading at least this many days on.
LATER_DAYS = 30


def _later(readings: Sequence[Checked], i: int) -> tuple[int, int] | None:
    """The first verified reading ``LATER_DAYS`` or more after reading ``i``, not below it: ``(time, km)``."""
    t, km = readings[i].event.event_time_ms, readings[i].event.odometer_km
    assert km is not None
    for r in readings[i + 1 :]:
        x = r.event
        late_enough = x.event_time_ms - t >= LATER_DAYS * DAY_MS
        if late_enough and x.verified and x.odometer_km is not None and x.odometer_km >= km:
            return x.event_time_ms, x.odometer_km
    return None


def _follows(
    flagged: tuple[int, int], ref: tuple[int, int], nxt: tuple[int, int], trusted: Sequence[tuple[int, int]]
) -> bool:
    """Whether ``nxt`` lies on the flagged reading's line rather than the reference's, both extended at the
    car's rate over the trusted readings before the reference (no rate known: the reference's line)."""
    first = next((p for p in trusted if ref[0] - p[0] >= 30 * DAY_MS), None)
    if first is None or ref[0] <= first[0]:
        return False
    rate = (ref[1] - first[1]) / (ref[0] - first[0])
    on_ref = abs(nxt[1] - (ref[1] + rate * (nxt[0] - ref[0])))
    on_flagged = abs(nxt[1] - (flagged[1] + rate * (nxt[0] - flagged[0])))
    return on_flagged < on_ref / 2


def odometer_standing(checked: Sequence[Checked], params: FraudParams = DEFAULT_PARAMS) -> dict[str, str]:
    """Event id -> standing of its odometer flag: ``one_off``, ``reference_one_off``, ``confirmed``, ``unconfirmed``.

    ``one_off``: the next verified reading agrees with the reference the flagged
    one contradicted: the flagged reading was wrong once (or the jump too small
    to tell from noise).  ``reference_one_off``: the flagged reading continues
    the trusted readings before its reference better than the reference does:
    the reference was wrong once (a typo small enough to be accepted).
    ``confirmed``: the next verified reading agrees with the flagged one: the
    odometer really moved.  ``unconfirmed``: no later reading says either way.
    ``other_chain``: the flagged reading and its reference belong to two
    odometer chains that interleave (:func:`reading_chains`): one car's reading
    compared with its clone's.
    """
    chains = reading_chains(checked, params)
    readings = [c for c in checked if c.event.odometer_km is not None]
    trusted: list[tuple[int, int]] = []  # (time, km) of the readings that became the reference
    out: dict[str, str] = {}
    for i, c in enumerate(readings):
        e = c.event
        km, t = e.odometer_km, e.event_time_ms
        assert km is not None
        flag = _odometer_flag(c)
        if flag is None:
            if e.verified:
                trusted.append((t, km))
            continue
        ref_km, ref_ms = int(c.evidence[flag]["previous_km"]), int(c.evidence[flag]["previous_time_ms"])
        if chains and chains.get((t, km), -1) != chains.get((ref_ms, ref_km), -1):
            out[e.event_id] = "other_chain"
            continue
        nxt = next((r.event for r in readings[i + 1 :] if r.event.verified), None)
        before_ref = [p for p in trusted if p[0] < ref_ms]
        if nxt is not None and nxt.odometer_km is not None:
            with_ref = _agrees(nxt.odometer_km, nxt.event_time_ms, ref_km, ref_ms, params)
            with_this = _agrees(nxt.odometer_km, nxt.event_time_ms, km, t, params)
        else:
            with_ref = with_this = False
        if with_ref and not with_this:
            out[e.event_id] = "one_off"
        elif before_ref and _reference_is_off(
            before_ref, (ref_ms, ref_km), (t, km), params, partial(_later, readings, i)
        ):
            out[e.event_id] = "reference_one_off"
        elif with_ref:  # close to both: the car's own rate says which line the next reading is on
            assert nxt is not None and nxt.odometer_km is not None
            on_this = _follows((t, km), (ref_ms, ref_km), (nxt.event_time_ms, nxt.odometer_km), before_ref)
            out[e.event_id] = "confirmed" if on_this else "one_off"
        elif with_this:
            out[e.event_id] = "confirmed"
        else:
            out[e.event_id] = "unconfirmed"
    return out


#: Standings of an odometer drop that the next reading undid: a mistype, once in a while.
UNDONE = frozenset({"one_off", "reference_one_off"})


def repeated_drops(
    checked: Sequence[Checked], params: FraudParams = DEFAULT_PARAMS, standing: dict[str, str] | None = None
) -> list[tuple[str, Evidence]]:
    """``interleaved_odometers`` (``signal: repeated_drops``) on every undone drop from the ``repeated_drops``-th.

    An honest car's readings are mistyped now and then (no clean car of the
    simulator's seeds has more than two drops the next reading undid); drop after
    drop that the next reading undoes is two odometers a few hundred km apart,
    read in turn, which no chain tells apart (each is within the other's
    allowance): a clone whose twin shows about the real car's mileage.
    """
    standing = odometer_standing(checked, params) if standing is None else standing
    drops = [
        c for c in checked if "odometer_rollback" in c.flags and standing.get(c.event.event_id) in UNDONE
    ]
    if len(drops) < params.repeated_drops:
        return []
    out: list[tuple[str, Evidence]] = []
    for c in drops[params.repeated_drops - 1 :]:
        detail = {
            "signal": "repeated_drops",
            "drops": len(drops),
            "odometer_km": c.event.odometer_km,
            "other_km": c.evidence["odometer_rollback"]["previous_km"],
        }
        if c.event.tier is not None:  # an owner's entries weigh less than a garage's (scoring.TIER_FACTOR)
            detail["tier"] = c.event.tier
        out.append((c.event.event_id, {"interleaved_odometers": detail}))
    return out


def rollback_before_sale(
    checked: Sequence[Checked],
    params: FraudParams = DEFAULT_PARAMS,
    standing: dict[str, str] | None = None,
) -> list[tuple[str, Evidence]]:
    """Ownership changes preceded (within ``sale_window_days``, sale included) by an odometer rollback.

    Rollbacks that :func:`odometer_standing` explains as one-off errors do not count.
    """
    standing = odometer_standing(checked, params) if standing is None else standing
    window = params.sale_window_days * DAY_MS
    rollbacks = [
        c for c in checked if "odometer_rollback" in c.flags and standing.get(c.event.event_id) not in ONE_OFF
    ]
    out: list[tuple[str, Evidence]] = []
    for sale in checked:
        if sale.event.event_type != "ownership_change" or "duplicate_event" in sale.flags:
            continue
        t = sale.event.event_time_ms
        before = [r for r in rollbacks if t - window <= r.event.event_time_ms <= t]
        # a drop first seen after the sale whose last higher reading came before it: the odometer
        # went down across the sale (a car read once a quarter shows its wind-back only afterwards)
        across = [
            r
            for r in rollbacks
            if int(r.evidence["odometer_rollback"]["previous_time_ms"])
            < t
            < r.event.event_time_ms
            <= t + window
        ]
        if before or across:
            r = max(before or across, key=lambda c: c.evidence["odometer_rollback"]["drop_km"])
            detail = {
                "rollback_event_id": r.event.event_id,
                "drop_km": r.evidence["odometer_rollback"]["drop_km"],
                "days_before_sale": round((t - r.event.event_time_ms) / DAY_MS, 1),
                "nearest_days_before_sale": round(
                    (t - max(c.event.event_time_ms for c in before)) / DAY_MS if before else 0.0, 1
                ),
                "across_sale": not before,
            }
            out.append((sale.event.event_id, {"rollback_before_sale": detail}))
    return out


def _segments(
    checked: Sequence[Checked], standing: dict[str, str], chains: dict[tuple[int, int], int]
) -> list[list[tuple[int, int, str]]]:
    """Runs of trusted readings ``(time, km, event id)`` between two odometer jumps, of the car's own chain."""
    wrong_refs = set()  # readings a later one showed to be one-off errors
    for c in checked:
        flag = _odometer_flag(c)
        # the standing is keyed by event id: a replay of the flagged reading (``duplicate_event``,
        # no odometer flag of its own) shares it but names no reference
        if flag is not None and standing.get(c.event.event_id) == "reference_one_off":
            detail = c.evidence[flag]
            wrong_refs.add((int(detail["previous_time_ms"]), int(detail["previous_km"])))
    segments: list[list[tuple[int, int, str]]] = [[]]
    for c in checked:
        e = c.event
        if e.odometer_km is None or not e.verified or (e.event_time_ms, e.odometer_km) in wrong_refs:
            continue
        if chains and chains.get((e.event_time_ms, e.odometer_km), -1) != 0:
            continue  # the other odometer's reading (a clone's)
        kind = standing.get(e.event_id)
        if kind in ("one_off", "other_chain") or "impossible_travel" in c.flags:
            continue
        if kind is not None and kind != "reference_one_off":
            if segments[-1]:
                segments.append([])  # the odometer moved: rates restart from here
            continue
        run = segments[-1]
        if run and e.event_time_ms - run[-1][0] < DAY_MS:
            continue
        run.append((e.event_time_ms, e.odometer_km, e.event_id))
    return [s for s in segments if len(s) >= 2]


YEAR_MS = 365.25 * DAY_MS
#: A twelfth of the year: the fleet's profile has one rate per twelfth.
PART_MS = YEAR_MS / 12


@lru_cache(maxsize=8)
def _prefix(profile: tuple[float, ...]) -> tuple[float, ...]:
    """The fleet-days at the start of each twelfth (``PART_MS`` units), and of the next year last."""
    return tuple(accumulate(profile, initial=0.0))


def fleet_time(t: int, profile: tuple[float, ...], prefix: tuple[float, ...] | None = None) -> float:
    """Fleet-days since the epoch at ``t``: each day weighed by the fleet's relative km/day on it
    (``prefix``: ``_prefix(profile)``, when the caller has it already)."""
    if prefix is None:
        prefix = _prefix(profile)
    years, rest = divmod(t, YEAR_MS)
    part = min(int(rest // PART_MS), len(profile) - 1)
    return (years * prefix[-1] + prefix[part]) * PART_MS / DAY_MS + profile[part] * (
        rest - part * PART_MS
    ) / DAY_MS


def fleet_days(t0: int, t1: int, profile: tuple[float, ...]) -> float:
    """Days from ``t0`` to ``t1``, each weighed by the fleet's relative km/day on that day (``profile``).

    With a flat profile, plain days.  The km a car drives from ``t0`` to
    ``t1`` over this is its rate with the season the whole fleet lives taken out.
    """
    return fleet_time(t1, profile) - fleet_time(t0, profile)


#: Increments between two readings that the fleet's profile is measured on: short enough to
#: place the km in one twelfth of the year, long enough not to be one trip.
PROFILE_STEP_DAYS = (0.5, 16.0)


PROFILE_DIGITS = 2  # the fleet profile's precision (:func:`profile_from_sums`)


def profile_sums(
    history: Sequence[tuple[int, int]], min_days: float = 180.0
) -> tuple[list[float], list[float]]:
    """One vehicle's share of :func:`fleet_profile`: per twelfth of the year, its km over its own mean
    rate and the days they took (all zero for a car followed for under ``min_days``)."""
    km, days = [0.0] * 12, [0.0] * 12
    lo, hi = PROFILE_STEP_DAYS
    steps = []
    for (t0, k0), (t1, k1) in pairwise(sorted(history)):
        d = (t1 - t0) / DAY_MS
        if lo <= d <= hi and 0 <= k1 - k0 <= 1_000 * d:
            steps.append((t0, d, k1 - k0))
    total_days = sum(d for _, d, _ in steps)
    rate = sum(k for _, _, k in steps) / total_days if total_days >= min_days else 0.0
    if rate <= 0:
        return km, days
    for t0, d, k in steps:
        part = int((t0 + d * DAY_MS / 2) % YEAR_MS // PART_MS) % 12
        km[part] += k / rate
        days[part] += d
    return km, days


def profile_from_sums(km: Sequence[float], days: Sequence[float]) -> tuple[float, ...]:
    """The profile from the vehicles' :func:`profile_sums` added up; a twelfth with under 30 days counts as the mean.

    Rounded to hundredths: a seasonal swing is measured to about a percent at
    best, and a coarse profile moves only when the fleet's seasons do, not with
    every day of new readings (a move makes the batch layer redo every car).
    """
    raw = [k / d if d >= 30 else None for k, d in zip(km, days, strict=True)]
    known = [r for r in raw if r is not None]
    if not known:
        return (1.0,) * 12
    mean = sum(known) / len(known)
    return tuple(round(r / mean, PROFILE_DIGITS) if r is not None else 1.0 for r in raw)


def fleet_profile(readings: Iterable[Sequence[tuple[int, int]]]) -> tuple[float, ...]:
    """The fleet's km/day in each twelfth of the year, over its mean (one value per twelfth, mean 1).

    ``readings``: per vehicle, its ``(time ms, km)`` odometer readings.  Each
    car's increments between readings 12 h to 16 days apart, going up at a
    possible rate, are divided by the car's own mean rate (so that a long-haul
    truck weighs as much as a weekend car) and pooled per twelfth; cars
    followed for under 180 days do not count.  Clocked cars are too few to move it.
    """
    km, days = [0.0] * 12, [0.0] * 12
    for history in readings:
        k, d = profile_sums(history)
        km = [a + b for a, b in zip(km, k, strict=True)]
        days = [a + b for a, b in zip(days, d, strict=True)]
    return profile_from_sums(km, days)


def gradual_clocking(
    checked: Sequence[Checked],
    params: FraudParams = DEFAULT_PARAMS,
    standing: dict[str, str] | None = None,
) -> list[tuple[str, Evidence]]:
    """The car's mileage rate dropping well below its own earlier rate.

    Uses the trusted readings (verified, no odometer or travel flag) and the
    increments between consecutive ones that no odometer jump separates.  For
    each reading taken as the change point, the rate before is the km of the
    increments ending by then over their days, the rate after likewise from
    then on; both sides must span ``clocking_min_span_days`` and the rate before
    be at least ``clocking_min_rate``.  The latest trusted reading is flagged
    when the lowest ``rate after / rate before`` is below ``clocking_ratio``.
    A car whose readings come from several sources (telematics among them) is
    measured on all of them: clocked garage or manual readings that fall below
    the telematics show as rollbacks, which the segments leave out.
    """
    standing = odometer_standing(checked, params) if standing is None else standing
    segments = _segments(checked, standing, reading_chains(checked, params))
    if not segments:
        return []
    # increments (start time, end time, km), in time order
    steps = [(a[0], b[0], b[1] - a[1]) for run in segments for a, b in pairwise(run)]
    cuts = sorted({p[0] for run in segments for p in run})
    span = params.clocking_min_span_days * DAY_MS
    best: tuple[float, float, float, float, int, float] | None = None
    starts, ends = [s[0] for s in steps], [s[1] for s in steps]
    profile = params.fleet_profile
    prefix = _prefix(profile)
    clock = {t: fleet_time(t, profile, prefix) for t in {t for step in steps for t in step[:2]}}
    days_sum = [0.0, *accumulate(clock[t1] - clock[t0] for t0, t1, _ in steps)]
    real_sum = [0, *accumulate(t1 - t0 for t0, t1, _ in steps)]
    km_sum = [0, *accumulate(s[2] for s in steps)]
    for cut in cuts:
        n_before, n_after = bisect_right(ends, cut), bisect_left(starts, cut)
        b_days, b_km = days_sum[n_before], km_sum[n_before]
        a_days, a_km = days_sum[-1] - days_sum[n_after], km_sum[-1] - km_sum[n_after]
        b_real, a_real = real_sum[n_before], real_sum[-1] - real_sum[n_after]
        if b_real < span or a_real < span:
            continue
        before, after = b_km / (b_real / DAY_MS), a_km / (a_real / DAY_MS)
        if before < params.clocking_min_rate:
            continue
        fleet = (a_days / (a_real / DAY_MS)) / (b_days / (b_real / DAY_MS))  # the fleet's after / before
        ratio = after / before / fleet
        # how many standard errors the drop is, for a car whose daily km vary by clocking_daily_cv
        if ratio >= 1.0:
            continue  # no drop: nothing to test
        z = -math.log(max(ratio, 1e-6)) / (params.clocking_daily_cv * math.sqrt(1 / b_days + 1 / a_days))
        if best is None or z > best[0]:
            best = (z, ratio, before, after, cut, fleet)
    if best is None or best[1] >= params.clocking_ratio or best[0] < params.clocking_min_z:
        return []
    z, ratio, before, after, since, fleet = best
    latest = max((p for run in segments for p in run), key=lambda p: p[0])
    detail = {
        "km_per_day_before": round(before, 1),
        "km_per_day_after": round(after, 1),
        "fleet_ratio": round(fleet, 3),
        "ratio": round(ratio, 3),
        "z": round(z, 2),
        "since_time_ms": since,
    }
    return [(latest[2], {"gradual_clocking": detail})]
