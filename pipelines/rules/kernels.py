"""The per-vehicle fraud rules compiled (numba) over a vehicle's columns.

The same rules as :func:`pipelines.rules.fraud.assess_vehicle` (which stays
the reference: a property test checks the two agree on random histories, flags,
evidence and score), run over arrays instead of one Python object per event:

* :func:`_stream`: :func:`pipelines.rules.stream.check_event` over the whole
  history, with the odometer chains of :func:`pipelines.rules.chains.track`, as
  one state machine; per event a bit mask of the flags and the numbers of their
  evidence, per reading the chain it joined;
* :func:`_standing`: :func:`pipelines.rules.history.odometer_standing`;
* :func:`_clocking`: the segments and the change point of
  :func:`pipelines.rules.history.gradual_clocking`.

What is per flagged event only (rollback before a sale over the sales, the
evidence dicts, the score through :func:`pipelines.rules.scoring.fraud_score`)
stays in Python: it costs nothing on the events no rule flagged.

The events must come in :func:`pipelines.rules.stream.sort_key` order (the
batch pass sorts them so).  The compiled code is cached on disk
(``cache=True``): the first call in a fresh environment compiles for a few
seconds, later processes load it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from numba import njit

from pipelines.rules.columns import ODOMETER_READING, OWNERSHIP_CHANGE, Columns, columns
from pipelines.rules.history import LATER_DAYS, ONE_OFF, PROFILE_STEP_DAYS, UNDONE, _prefix
from pipelines.rules.scoring import Score, fraud_score
from pipelines.rules.stream import (
    DAY_MS,
    DEFAULT_PARAMS,
    NEAR_DEGREES,
    NEAR_KM,
    Evidence,
    FraudParams,
)

__all__ = ["Columns", "KernelAssessment", "assess_columns", "columns", "profile_columns"]

# flag bits, in the order check_event raises them
WRECK, ROLLBACK, RATE, INTERLEAVED, TRAVEL, DUPLICATE = 1, 2, 4, 8, 16, 32
#: standings (pipelines.rules.history.odometer_standing), 0: none
STANDINGS = ("", "one_off", "reference_one_off", "confirmed", "unconfirmed", "other_chain")
_YEAR_MS = 365.25 * DAY_MS
_PART_MS = _YEAR_MS / 12


_PARAMS: dict[int, tuple[FraudParams, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}


def _params(p: FraudParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_arrays` of ``p``, kept per params object (hashing the params costs more than a vehicle)."""
    hit = _PARAMS.get(id(p))
    if hit is None or hit[0] is not p:
        hit = _PARAMS[id(p)] = (p, _arrays(p))
    return hit[1]


@lru_cache(maxsize=8)
def _arrays(p: FraudParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The thresholds as one array for the kernels, the fleet profile and its prefix sums."""
    c = p.chains
    profile = np.array(p.fleet_profile, np.float64)
    prefix = np.array(_prefix(p.fleet_profile), np.float64)
    return np.array(
        [
            p.rollback_tolerance_km, p.max_km_per_day, p.sustained_km_per_day, p.jump_slack_km,
            p.max_speed_kmh, p.min_travel_km, p.recent_ids,
            c.tolerance_km, c.slack_km, c.rate_factor, c.min_km_per_day, c.default_km_per_day,
            c.prior_km_per_day, c.rate_days, c.region_km, c.region_cost_km, c.min_readings,
            c.apart_min_readings, c.stopped_rate_factor, c.overtaken_gap_factor, c.gone_days, c.typo_days,
            p.record_slack_h,
        ],
        np.float64,
    ), profile, prefix  # fmt: skip


@njit(cache=True)
def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 12_742.0 * math.asin(min(1.0, math.sqrt(a)))


@njit(cache=True)
def _problem(km: int, t: int, ref_km: int, ref_ms: int, P: np.ndarray) -> tuple[int, float]:
    """odometer_problem: (0 none | ROLLBACK | RATE, drop km or km/day)."""
    days = max(t - ref_ms, 0) / 86_400_000
    if ref_km - km > P[0]:
        return ROLLBACK, float(ref_km - km)
    allowed = P[3] + P[1] * min(days, 1.0) + P[2] * max(days - 1.0, 0.0)
    if km - ref_km > allowed:
        return RATE, (km - ref_km) / max(days, 1 / 24)
    return 0, 0.0


@njit(cache=True)
def _fit_cost(C: np.ndarray, CL: np.ndarray, s: int, km: int, t: int, P: np.ndarray) -> float:
    """chains.fit_cost of slot ``s`` (NaN: cannot continue it). C[s] = first_km, first_ms, km, ms, n."""
    days = (t - C[s, 3]) / 86_400_000
    span = (C[s, 3] - C[s, 1]) / 86_400_000
    if span >= P[13]:
        rate = (C[s, 2] - C[s, 0]) / span
        cap = max(P[9] * rate, P[10])
    else:
        rate, cap = P[12], P[11]
    if days >= 0:
        ahead = km - C[s, 2]
        if ahead < -P[7] or ahead > P[8] + cap * days:
            return math.nan
    else:
        behind = C[s, 2] - km
        if behind < -P[7] or behind > P[8] - cap * days:
            return math.nan
    return abs(km - C[s, 2] - rate * days)


@njit(cache=True)
def _overtaken(C: np.ndarray, s: int, t: int, P: np.ndarray) -> bool:
    """chains._overtaken of slot ``s`` by the other slot."""
    o = 1 - s
    if C[s, 3] >= C[o, 1] or C[o, 2] < C[s, 2] or C[s, 4] < 2:
        return False
    return t - C[s, 3] > P[19] * (C[s, 3] - C[s, 1]) / (C[s, 4] - 1)


@njit(cache=True)
def _miss(C: np.ndarray, s: int, km: int, t: int, P: np.ndarray) -> float:
    """chains._miss of slot ``s``."""
    span = (C[s, 3] - C[s, 1]) / 86_400_000
    rate = (C[s, 2] - C[s, 0]) / span if span >= P[13] else P[12]
    return abs(km - C[s, 2] - rate * (t - C[s, 3]) / 86_400_000)


@njit(cache=True)
def _typo_of(C: np.ndarray, s: int, km: int, t: int, P: np.ndarray) -> bool:
    """chains.typo_of of slot ``s``."""
    span = (C[s, 3] - C[s, 1]) / 86_400_000
    rate = (C[s, 2] - C[s, 0]) / span if span >= P[13] else P[12]
    days = max((t - C[s, 3]) / 86_400_000, 0.0)
    if days > P[21]:
        return False
    predicted, window = C[s, 2] + rate * days, P[7] + 0.5 * rate * days
    place = 1
    while place <= km:
        digit = km // place % 10
        fixed = km + (min(9, max(0, digit + round((predicted - km) / place))) - digit) * place
        if fixed != km and abs(fixed - predicted) <= window:
            return True
        place *= 10
    return False


@njit(cache=True)
def _stray(C: np.ndarray, s: int, km: int, t: int, P: np.ndarray) -> bool:
    """chains._stray of slot ``s`` against the other slot."""
    if t - C[s, 3] <= P[20] * 86_400_000:
        return False
    return _miss(C, 1 - s, km, t, P) < _miss(C, s, km, t, P)


@njit(cache=True)
def _too_fast_for_stopped(C: np.ndarray, s: int, km: int, t: int, P: np.ndarray) -> bool:
    """chains._too_fast_for_stopped of slot ``s`` against the other slot."""
    o = 1 - s
    if C[s, 3] >= C[o, 1] or t <= C[s, 3]:
        return False
    span = (C[s, 3] - C[s, 1]) / 86_400_000
    rate = (C[s, 2] - C[s, 0]) / span if span >= P[13] else P[12]
    return km - C[s, 2] > P[7] + P[18] * rate * (t - C[s, 3]) / 86_400_000


@njit(cache=True)
def _without_last(C: np.ndarray, CL: np.ndarray, s: int, km: int, t: int, P: np.ndarray) -> bool:
    """chains._without_last of slot ``s``: its last reading jumped ahead, and ``km`` continues it without."""
    if C[s, 4] < P[16] or t < C[s, 3]:
        return False
    span = (C[s, 6] - C[s, 1]) / 86_400_000
    rate = (C[s, 5] - C[s, 0]) / span if span >= P[13] else P[12]
    jump_days = max((C[s, 3] - C[s, 6]) / 86_400_000, 1.0)
    if C[s, 2] - C[s, 5] <= P[7] + P[9] * rate * jump_days:
        return False
    B = np.empty((1, 7), np.int64)
    B[0, 0], B[0, 1], B[0, 2], B[0, 3], B[0, 4] = C[s, 0], C[s, 1], C[s, 5], C[s, 6], C[s, 4] - 1
    return not math.isnan(_fit_cost(B, CL, 0, km, t, P))


@njit(cache=True)
def _region(CL: np.ndarray, s: int, lat: float, lon: float, P: np.ndarray) -> float:
    if math.isnan(lat) or math.isnan(lon) or math.isnan(CL[s, 0]) or math.isnan(CL[s, 1]):
        return 0.0
    return P[15] if _haversine(lat, lon, CL[s, 0], CL[s, 1]) > P[14] else 0.0


@njit(cache=True)
def _stream(codes, t, km, has_km, lat, lon, verified, kind, P):
    """check_event over a sorted history.

    Returns per event: flag bits (and all of them or-ed, last); ``num`` (n, 7): odometer previous km, previous ms, drop or km/day;
    interleaved other km, other ms, switches, distance (NaN: unlocated);
    ``num2`` (n, 4): travel distance, hours, wreck ms, travel previous ms; the chain id of each reading (-2: not one).
    """
    n = len(t)
    flags = np.zeros(n, np.int32)
    num = np.full((n, 7), math.nan)
    num2 = np.full((n, 4), math.nan)
    chain = np.full(n, -2, np.int64)
    recent_n = int(P[6])
    recent = np.empty(max(recent_n, 1), np.int64)
    seen = 0
    has_ref, ref_km, ref_ms = False, 0, 0
    has_cand, cand_km, cand_ms = False, 0, 0
    slat, slon, loc_ms, has_loc, loc_record = math.nan, math.nan, 0, False, False
    has_wreck, wreck_ms = False, 0
    C = np.zeros((2, 7), np.int64)  # first_km, first_ms, km, ms, n, prev_km, prev_ms
    CL = np.full((2, 2), math.nan)
    exists = np.zeros(2, np.bool_)
    last, switches = -1, 0
    slot_id = np.full(2, -1, np.int64)
    next_id = 0
    any_bits = 0  # every flag bit raised, or-ed
    for i in range(n):
        dup = False
        for j in range(min(seen, recent_n)):
            if recent[(seen - 1 - j) % recent_n] == codes[i]:
                dup = True
                break
        if dup:
            flags[i] = DUPLICATE
            any_bits |= DUPLICATE
            continue
        if recent_n > 0:
            recent[seen % recent_n] = codes[i]
            seen += 1
        ti = t[i]
        f = 0
        if has_wreck and ti > wreck_ms:
            f |= WRECK
            num2[i, 2] = wreck_ms
        if verified[i] and kind[i] == 1:
            wreck_ms = ti if not has_wreck else min(ti, wreck_ms)
            has_wreck = True
        if has_km[i]:
            k = km[i]
            prob, val = 0, 0.0
            if has_ref:
                prob, val = _problem(k, ti, ref_km, ref_ms, P)
            if prob == 0 or (has_cand and _problem(k, ti, cand_km, cand_ms, P)[0] == 0):
                if verified[i]:
                    has_ref, ref_km, ref_ms, has_cand = True, k, ti, False
            else:
                f |= prob
                num[i, 0], num[i, 1], num[i, 2] = ref_km, ref_ms, val
                if verified[i]:
                    has_cand, cand_km, cand_ms = True, k, ti
            if verified[i]:  # chains.track
                la, lo = lat[i], lon[i]
                joined = -3
                if not exists[0]:
                    C[0, 0], C[0, 1], C[0, 2], C[0, 3], C[0, 4] = k, ti, k, ti, 1
                    CL[0, 0], CL[0, 1] = la, lo
                    exists[0] = True
                    last, switches, joined = 0, 0, 0
                    slot_id[0], next_id = next_id, next_id + 1
                    chain[i] = slot_id[0]
                else:
                    ca = _fit_cost(C, CL, 0, k, ti, P)
                    cb = _fit_cost(C, CL, 1, k, ti, P) if exists[1] else math.nan
                    if exists[1] and C[0, 4] >= 2 and C[1, 4] >= 2:
                        if last == 0 and math.isnan(ca) and C[1, 3] < C[0, 1] and _typo_of(C, 0, k, ti, P):
                            cb = math.nan
                        elif last == 1 and math.isnan(cb) and C[0, 3] < C[1, 1] and _typo_of(C, 1, k, ti, P):
                            ca = math.nan
                        if not math.isnan(ca) and _too_fast_for_stopped(C, 0, k, ti, P):
                            ca = math.nan
                        if not math.isnan(cb) and _too_fast_for_stopped(C, 1, k, ti, P):
                            cb = math.nan
                        if _overtaken(C, 0, ti, P) and (not math.isnan(cb) or _stray(C, 0, k, ti, P)):
                            ca = math.nan
                        elif _overtaken(C, 1, ti, P) and (not math.isnan(ca) or _stray(C, 1, k, ti, P)):
                            cb = math.nan
                    if not math.isnan(ca) and not math.isnan(cb):
                        if (C[0, 4] >= 2) != (C[1, 4] >= 2):
                            if C[0, 4] >= 2:
                                cb = math.nan
                            else:
                                ca = math.nan
                        else:
                            ca += _region(CL, 0, la, lo, P)
                            cb += _region(CL, 1, la, lo, P)
                    new = False
                    absorbed = -1  # the slot whose last reading is set apart as a one-off
                    if not math.isnan(ca) and (math.isnan(cb) or ca <= cb):
                        joined = 0
                    elif not math.isnan(cb):
                        joined = 1
                    elif (not exists[1] or C[1, 4] < 2) and _without_last(C, CL, 0, k, ti, P):
                        joined, absorbed = 0, 0
                    elif exists[1] and C[0, 4] < 2 and _without_last(C, CL, 1, k, ti, P):
                        joined, absorbed = 1, 1
                    elif not exists[1] or C[1, 4] < 2:
                        joined, new = 1, True
                    elif C[0, 4] < 2:
                        joined, new = 0, True
                    else:
                        joined = -1
                    if joined == -1:
                        chain[i] = -1
                    else:
                        s = joined
                        if absorbed >= 0:  # the typo becomes the other slot's one-off chain
                            o = 1 - s
                            C[o, 0], C[o, 1], C[o, 2], C[o, 3], C[o, 4] = (
                                C[s, 2],
                                C[s, 3],
                                C[s, 2],
                                C[s, 3],
                                1,
                            )
                            C[o, 5], C[o, 6] = 0, 0
                            CL[o, 0], CL[o, 1] = CL[s, 0], CL[s, 1]
                            exists[o] = True
                            if math.isnan(la) or math.isnan(lo):
                                la, lo = CL[s, 0], CL[s, 1]
                            C[s, 2], C[s, 3] = k, ti
                            CL[s, 0], CL[s, 1] = la, lo
                            slot_id[o], next_id = next_id, next_id + 1
                        elif new:
                            C[s, 0], C[s, 1], C[s, 2], C[s, 3], C[s, 4] = k, ti, k, ti, 1
                            C[s, 5], C[s, 6] = 0, 0
                            CL[s, 0], CL[s, 1] = la, lo
                            exists[s] = True
                        elif ti < C[s, 3]:
                            C[s, 4] += 1
                        else:
                            if math.isnan(la) or math.isnan(lo):
                                la, lo = CL[s, 0], CL[s, 1]
                            C[s, 5], C[s, 6] = C[s, 2], C[s, 3]
                            C[s, 2], C[s, 3], C[s, 4] = k, ti, C[s, 4] + 1
                            CL[s, 0], CL[s, 1] = la, lo
                        if C[s, 4] == 1:
                            slot_id[s], next_id = next_id, next_id + 1
                        chain[i] = slot_id[s]
                        if last != -1 and last != joined:
                            switches += 1
                        persistent = False
                        if exists[1]:
                            m = min(C[0, 4], C[1, 4])
                            if m >= P[16]:
                                persistent = True
                            elif m >= P[17] and not (
                                math.isnan(CL[0, 0])
                                or math.isnan(CL[0, 1])
                                or math.isnan(CL[1, 0])
                                or math.isnan(CL[1, 1])
                            ):
                                persistent = _haversine(CL[0, 0], CL[0, 1], CL[1, 0], CL[1, 1]) > P[14]
                        interleaved = persistent and switches >= 2 and joined != last
                        last = joined
                        if interleaved:
                            o = 1 - joined
                            f &= ~(ROLLBACK | RATE)
                            f |= INTERLEAVED
                            num[i, 3], num[i, 4], num[i, 5] = C[o, 2], C[o, 3], switches
                            if not (
                                math.isnan(lat[i])
                                or math.isnan(lon[i])
                                or math.isnan(CL[o, 0])
                                or math.isnan(CL[o, 1])
                            ):
                                num[i, 6] = _haversine(lat[i], lon[i], CL[o, 0], CL[o, 1])
        if not (math.isnan(lat[i]) or math.isnan(lon[i])):
            near = (
                P[5] >= NEAR_KM
                and has_loc
                and abs(lat[i] - slat) < NEAR_DEGREES
                and abs(lon[i] - slon) < NEAR_DEGREES
            )
            if not near and has_loc:
                d = _haversine(slat, slon, lat[i], lon[i])
                hours = (ti - loc_ms) / 3_600_000
                slack = P[22] * (int(loc_record) + int(kind[i] != ODOMETER_READING))  # stream._travel
                if d > P[5] and (hours + slack <= 0 or d / (hours + slack) > P[4]):
                    f |= TRAVEL
                    num2[i, 0], num2[i, 1], num2[i, 3] = d, hours, loc_ms
            if verified[i]:
                slat, slon, loc_ms, has_loc = lat[i], lon[i], ti, True
                loc_record = kind[i] != ODOMETER_READING
        flags[i] = f
        any_bits |= f
    return flags, num, num2, chain, any_bits


@njit(cache=True)
def _agrees(km: int, t: int, ref_km: int, ref_ms: int, P: np.ndarray) -> bool:
    return _problem(km, t, ref_km, ref_ms, P)[0] == 0


@njit(cache=True)
def _rank_of(tk: int, kk: int, t, km, reading, rank) -> int:
    """The chain rank of the last chain reading at (time, km), -1 if none (reading_chains' dict)."""
    for j in range(len(t) - 1, -1, -1):
        if reading[j] and t[j] == tk and km[j] == kk:
            return rank[j]
    return -1


@njit(cache=True)
def _standing(codes, t, km, has_km, verified, flags, num, rank, chained, n_codes, P):
    """odometer_standing: a standing per event-id code (0: none, else an index of STANDINGS)."""
    n = len(t)
    out = np.zeros(n_codes, np.int8)
    reading = rank > -2
    tt = np.empty(n, np.int64)
    tkm = np.empty(n, np.int64)
    nt = 0
    for i in range(n):
        if not has_km[i]:
            continue
        k, ti = km[i], t[i]
        if flags[i] & (ROLLBACK | RATE) == 0:
            if verified[i]:
                tt[nt], tkm[nt] = ti, k
                nt += 1
            continue
        ref_km, ref_ms = int(num[i, 0]), int(num[i, 1])
        if chained and _rank_of(ti, k, t, km, reading, rank) != _rank_of(
            ref_ms, ref_km, t, km, reading, rank
        ):
            out[codes[i]] = 5
            continue
        nxt = -1
        for j in range(i + 1, n):
            if has_km[j] and verified[j]:
                nxt = j
                break
        nb = 0  # trusted readings before the reference: a prefix (times never go down)
        while nb < nt and tt[nb] < ref_ms:
            nb += 1
        with_ref = with_this = False
        if nxt >= 0:
            with_ref = _agrees(km[nxt], t[nxt], ref_km, ref_ms, P)
            with_this = _agrees(km[nxt], t[nxt], k, ti, P)
        ref_off = False
        if not (with_ref and not with_this) and nb > 0:
            t0, km0 = tt[nb - 1], tkm[nb - 1]
            if _agrees(k, ti, km0, t0, P):
                first = -1
                for j in range(nb):
                    if t0 - tt[j] >= 86_400_000:
                        first = j
                        break
                later = -1  # history._later: the car's pace after the flagged reading
                if first < 0:
                    for j in range(i + 1, n):
                        if has_km[j] and verified[j] and t[j] - ti >= LATER_DAYS * 86_400_000 and km[j] >= k:
                            later = j
                            break
                if first < 0 and later < 0:
                    ref_off = True
                else:
                    if first >= 0:
                        rate = (km0 - tkm[first]) / (t0 - tt[first])
                    else:
                        rate = (km[later] - k) / (t[later] - ti)
                    ref_off = abs(k - (km0 + rate * (ti - t0))) < abs(ref_km - (km0 + rate * (ref_ms - t0)))
        if with_ref and not with_this:
            out[codes[i]] = 1
        elif ref_off:
            out[codes[i]] = 2
        elif with_ref:
            on_this = False
            first = -1
            for j in range(nb):
                if ref_ms - tt[j] >= 30 * 86_400_000:
                    first = j
                    break
            if first >= 0 and ref_ms > tt[first]:
                rate = (ref_km - tkm[first]) / (ref_ms - tt[first])
                on_ref = abs(km[nxt] - (ref_km + rate * (t[nxt] - ref_ms)))
                on_flagged = abs(km[nxt] - (k + rate * (t[nxt] - ti)))
                on_this = on_flagged < on_ref / 2
            out[codes[i]] = 3 if on_this else 1
        elif with_this:
            out[codes[i]] = 3
        else:
            out[codes[i]] = 4
    return out


@njit(cache=True)
def _pydivmod(x: float, y: float) -> tuple[float, float]:
    """CPython's float divmod (y > 0)."""
    mod = np.fmod(x, y)
    div = (x - mod) / y
    if mod != 0.0:
        if mod < 0:
            mod += y
            div -= 1.0
    else:
        mod = 0.0
    if div != 0.0:
        floordiv = math.floor(div)
        if div - floordiv > 0.5:
            floordiv += 1.0
    else:
        floordiv = math.copysign(0.0, x / y)
    return floordiv, mod


@njit(cache=True)
def _fleet_time(t: int, profile: np.ndarray, prefix: np.ndarray) -> float:
    years, rest = _pydivmod(float(t), _YEAR_MS)
    part = min(int(_pydivmod(rest, _PART_MS)[0]), len(profile) - 1)
    return (years * prefix[-1] + prefix[part]) * _PART_MS / 86_400_000 + profile[part] * (
        rest - part * _PART_MS
    ) / 86_400_000


@njit(cache=True)
def _clocking(codes, t, km, has_km, verified, flags, standing, rank, chained, wrong_t, wrong_km,
              profile, prefix, span_days, min_rate, cv):  # fmt: skip
    """gradual_clocking's segments and best change point: (found, z, ratio, before, after, since, fleet, latest)."""
    n = len(t)
    reading = rank > -2
    st = np.empty(n, np.int64)  # segment points
    sk = np.empty(n, np.int64)
    si = np.empty(n, np.int64)
    seg = np.empty(n, np.int64)
    npts, cur, cur_len = 0, 0, 0
    for i in range(n):
        if not has_km[i] or not verified[i]:
            continue
        wrong = False
        for j in range(len(wrong_t)):
            if wrong_t[j] == t[i] and wrong_km[j] == km[i]:
                wrong = True
                break
        if wrong:
            continue
        if chained and _rank_of(t[i], km[i], t, km, reading, rank) != 0:
            continue
        kind = standing[codes[i]]
        if kind == 1 or kind == 5 or flags[i] & TRAVEL:
            continue
        if kind != 0 and kind != 2:
            if cur_len > 0:
                cur, cur_len = cur + 1, 0
            continue
        if cur_len > 0 and t[i] - st[npts - 1] < 86_400_000:
            continue
        st[npts], sk[npts], si[npts], seg[npts] = t[i], km[i], i, cur
        npts += 1
        cur_len += 1
    # runs of 2 or more points
    keep = np.zeros(npts, np.bool_)
    a = 0
    while a < npts:
        b = a
        while b < npts and seg[b] == seg[a]:
            b += 1
        if b - a >= 2:
            keep[a:b] = True
        a = b
    pts = np.flatnonzero(keep)
    if len(pts) == 0:
        return False, 0.0, 0.0, 0.0, 0.0, 0, 0.0, -1
    m = len(pts)
    s0 = np.empty(m, np.int64)
    s1 = np.empty(m, np.int64)
    sk_ = np.empty(m, np.int64)
    ns = 0
    for q in range(m - 1):
        u, v = pts[q], pts[q + 1]
        if seg[u] == seg[v]:
            s0[ns], s1[ns], sk_[ns] = st[u], st[v], sk[v] - sk[u]
            ns += 1
    days_sum = np.zeros(ns + 1)
    real_sum = np.zeros(ns + 1, np.int64)
    km_sum = np.zeros(ns + 1, np.int64)
    for q in range(ns):
        days_sum[q + 1] = days_sum[q] + (
            _fleet_time(s1[q], profile, prefix) - _fleet_time(s0[q], profile, prefix)
        )
        real_sum[q + 1] = real_sum[q] + (s1[q] - s0[q])
        km_sum[q + 1] = km_sum[q] + sk_[q]
    starts, ends = s0[:ns], s1[:ns]
    cuts = np.unique(st[pts])
    span = span_days * 86_400_000
    found = False
    bz = bratio = bbefore = bafter = bfleet = 0.0
    bcut = 0
    for cut in cuts:
        nb = np.searchsorted(ends, cut, side="right")
        na = np.searchsorted(starts, cut, side="left")
        b_days, b_km = days_sum[nb], km_sum[nb]
        a_days, a_km = days_sum[ns] - days_sum[na], km_sum[ns] - km_sum[na]
        b_real, a_real = real_sum[nb], real_sum[ns] - real_sum[na]
        if b_real < span or a_real < span:
            continue
        before, after = b_km / (b_real / 86_400_000), a_km / (a_real / 86_400_000)
        if before < min_rate:
            continue
        fleet = (a_days / (a_real / 86_400_000)) / (b_days / (b_real / 86_400_000))
        ratio = after / before / fleet
        if ratio >= 1.0:
            continue
        z = -math.log(max(ratio, 1e-6)) / (cv * math.sqrt(1 / b_days + 1 / a_days))
        if not found or z > bz:
            found, bz, bratio, bbefore, bafter, bcut, bfleet = True, z, ratio, before, after, int(cut), fleet
    latest = int(pts[0])
    for point in pts:
        if st[point] > st[latest]:
            latest = int(point)
    return found, bz, bratio, bbefore, bafter, bcut, bfleet, si[latest]


@njit(cache=True)
def _ranks(chain: np.ndarray) -> np.ndarray:
    """Each chain reading's chain rank (0: the chain with the most readings, ties to the first seen)."""
    m = 0
    for x in chain:
        if x >= 0:
            m = max(m, x + 1)
    sizes = np.zeros(m, np.int64)
    for x in chain:
        if x >= 0:
            sizes[x] += 1
    order = np.argsort(-sizes, kind="mergesort")
    ranks = np.empty(m, np.int64)
    ranks[order] = np.arange(m)
    rank = chain.copy()
    for i in range(len(chain)):
        if chain[i] >= 0:
            rank[i] = ranks[chain[i]]
    return rank


@njit(cache=True)
def _verdict(codes, t, km, has_km, lat, lon, verified, kind, P, profile, prefix, span_days, min_rate, cv):
    """What assess_columns needs of the kernels, in one call: _stream's flags and numbers, every flag
    bit or-ed, the standing of each odometer flag and gradual clocking's best change point."""
    n = len(t)
    n_codes = 0
    for i in range(n):
        n_codes = max(n_codes, codes[i] + 1)
    bits, num, num2, chain, any_bits = _stream(codes, t, km, has_km, lat, lon, verified, kind, P)
    chained = (any_bits & INTERLEAVED) != 0
    rank = _ranks(chain) if chained else chain  # -2: not a chain reading; only read when chained
    if any_bits & (ROLLBACK | RATE):
        standing = _standing(codes, t, km, has_km, verified, bits, num, rank, chained, n_codes, P)
    else:
        standing = np.zeros(n_codes, np.int8)
    clock = (False, 0.0, 0.0, 0.0, 0.0, 0, 0.0, -1)
    if not chained:  # references the standing found wrong (reference_one_off) are left out of the rates
        wrong_t = np.empty(n, np.int64)
        wrong_km = np.empty(n, np.int64)
        nw = 0
        for i in range(n):
            if bits[i] & (ROLLBACK | RATE) and standing[codes[i]] == 2:
                wrong_t[nw], wrong_km[nw] = int(num[i, 1]), int(num[i, 0])
                nw += 1
        clock = _clocking(codes, t, km, has_km, verified, bits, standing, rank, chained, wrong_t[:nw],
                          wrong_km[:nw], profile, prefix, span_days, min_rate, cv)  # fmt: skip
    return bits, num, num2, any_bits, standing, clock


class KernelAssessment(NamedTuple):
    """What :func:`assess_columns` finds: the flags per event (empty for most), evidence of flagged ones, the score."""

    flags: list[tuple[str, ...]]
    evidence: dict[int, Evidence]  # event index -> {flag: detail}, flagged events only
    score: Score


_BIT_FLAGS = (
    (WRECK, "activity_after_wreck"),
    (ROLLBACK, "odometer_rollback"),
    (RATE, "implausible_rate"),
    (INTERLEAVED, "interleaved_odometers"),
    (TRAVEL, "impossible_travel"),
    (DUPLICATE, "duplicate_event"),
)
_ONE_OFF_CODES = frozenset(STANDINGS.index(s) for s in ONE_OFF)
_UNDONE_CODES = frozenset(STANDINGS.index(s) for s in UNDONE)
_NO_CODES = np.empty(0, np.int64)


def _stream_evidence(
    i: int, bits: int, c: Columns, num: np.ndarray, num2: np.ndarray
) -> tuple[list[str], Evidence]:
    if bits == WRECK and c.tier is None:  # most flagged events: every one after a wreck
        w = int(num2[i, 2])
        return ["activity_after_wreck"], {
            "activity_after_wreck": {"wreck_time_ms": w, "days_after": (int(c.t[i]) - w) / DAY_MS}
        }
    flags: list[str] = []
    ev: Evidence = {}
    t = int(c.t[i])
    for bit, name in _BIT_FLAGS:
        if not bits & bit:
            continue
        flags.append(name)
        if bit == WRECK:
            w = int(num2[i, 2])
            ev[name] = {"wreck_time_ms": w, "days_after": (t - w) / DAY_MS}
        elif bit == ROLLBACK:
            ev[name] = {"previous_km": int(num[i, 0]), "previous_time_ms": int(num[i, 1]),
                        "drop_km": int(num[i, 2]), "odometer_km": int(c.km[i])}  # fmt: skip
        elif bit == RATE:
            ev[name] = {"previous_km": int(num[i, 0]), "previous_time_ms": int(num[i, 1]),
                        "km_per_day": round(float(num[i, 2])), "odometer_km": int(c.km[i])}  # fmt: skip
        elif bit == INTERLEAVED:
            d = {"odometer_km": int(c.km[i]), "other_km": int(num[i, 3]), "other_time_ms": int(num[i, 4]),
                 "switches": int(num[i, 5]), "signal": "odometer_chains"}  # fmt: skip
            if not math.isnan(num[i, 6]):
                d["distance_km"] = round(float(num[i, 6]))
            ev[name] = d
        elif bit == TRAVEL:
            ev[name] = {"distance_km": round(float(num2[i, 0]), 1), "hours": round(float(num2[i, 1]), 3),
                        "previous_time_ms": int(num2[i, 3])}  # fmt: skip
        else:
            ev[name] = {"event_id": c.ids[i]}
    if c.tier is not None and c.tier[i] is not None and not bits & DUPLICATE:
        for detail in ev.values():
            detail["tier"] = c.tier[i]
    return flags, ev


def assess_columns(
    c: Columns,
    stream_flags: dict[int, Sequence[str]] | None = None,
    params: FraudParams = DEFAULT_PARAMS,
) -> KernelAssessment:
    """:func:`pipelines.rules.fraud.assess_vehicle` over columns in ``sort_key`` order.

    ``stream_flags``: event index -> flags the speed layer raised (merged in as the reference does).
    """
    P, profile, prefix = _params(params)
    n = len(c.t)
    bits, num, num2, any_bits, standing, clock = _verdict(
        c.codes, c.t, c.km, c.has_km, c.lat, c.lon, c.verified, c.kind, P, profile, prefix,
        float(params.clocking_min_span_days), params.clocking_min_rate, params.clocking_daily_cv,
    )  # fmt: skip
    chained = bool(any_bits & INTERLEAVED)
    extra: dict[int, Evidence] = {}  # id code -> history flags
    # repeated drops: the undone drops from the repeated_drops-th on (history.repeated_drops)
    drops = (
        [i for i in np.flatnonzero(bits & ROLLBACK).tolist() if int(standing[c.codes[i]]) in _UNDONE_CODES]
        if any_bits & ROLLBACK
        else []
    )
    if len(drops) >= params.repeated_drops:
        for i in drops[params.repeated_drops - 1 :]:
            detail = {
                "signal": "repeated_drops",
                "drops": len(drops),
                "odometer_km": int(c.km[i]),
                "other_km": int(num[i, 0]),
            }
            if c.tier is not None and c.tier[i] is not None:
                detail["tier"] = c.tier[i]
            extra.setdefault(int(c.codes[i]), {})["interleaved_odometers"] = detail
    # rollback before a sale: over the sales and the rollbacks only
    sales = (
        np.flatnonzero((c.kind == OWNERSHIP_CHANGE) & ((bits & DUPLICATE) == 0))
        if any_bits & ROLLBACK
        else np.empty(0, np.int64)
    )
    rollbacks = (
        [int(i) for i in np.flatnonzero(bits & ROLLBACK) if int(standing[c.codes[i]]) not in _ONE_OFF_CODES]
        if len(sales)
        else []
    )
    if rollbacks:
        window = params.sale_window_days * DAY_MS
        for s in sales.tolist():
            t = int(c.t[s])
            before = [r for r in rollbacks if t - window <= c.t[r] <= t]
            across = [r for r in rollbacks if int(num[r, 1]) < t < c.t[r] <= t + window]
            if before or across:
                r = max(before or across, key=lambda x: int(num[x, 2]))
                detail = {
                    "rollback_event_id": c.ids[r],
                    "drop_km": int(num[r, 2]),
                    "days_before_sale": round((t - int(c.t[r])) / DAY_MS, 1),
                    "nearest_days_before_sale": round(
                        (t - max(int(c.t[x]) for x in before)) / DAY_MS if before else 0.0, 1
                    ),
                    "across_sale": not before,
                }
                extra.setdefault(int(c.codes[s]), {}).update({"rollback_before_sale": detail})
    if not chained:  # two odometers: no one rate to measure
        found, z, ratio, before, after, since, fleet, latest = clock
        if found and ratio < params.clocking_ratio and z >= params.clocking_min_z:
            detail = {
                "km_per_day_before": round(before, 1),
                "km_per_day_after": round(after, 1),
                "fleet_ratio": round(fleet, 3),
                "ratio": round(ratio, 3),
                "z": round(z, 2),
                "since_time_ms": int(since),
            }
            extra.setdefault(int(c.codes[latest]), {}).update({"gradual_clocking": detail})
    out_flags: list[tuple[str, ...]] = [()] * n
    evidence: dict[int, Evidence] = {}
    touched = set(np.flatnonzero(bits).tolist()) if any_bits else set()
    if extra:
        touched.update(np.flatnonzero(np.isin(c.codes, list(extra))).tolist())
    if stream_flags:
        touched.update(stream_flags)
    order = sorted(touched)
    codes = c.codes[order] if order else _NO_CODES  # one NumPy call for every flagged event, not one each
    for i, b, code, st in zip(
        order, bits[order].tolist(), codes.tolist(), standing[codes].tolist(), strict=True
    ):
        flags, ev = _stream_evidence(i, b, c, num, num2)
        if st:
            for flag in ("odometer_rollback", "implausible_rate"):
                if flag in ev:
                    ev[flag]["standing"] = STANDINGS[st]
        for flag, detail in extra.get(code, {}).items():
            flags.append(flag)
            ev[flag] = detail
        for flag in (stream_flags or {}).get(i, ()):
            if flag not in flags:
                flags.append(flag)
                ev.setdefault(flag, {"raised_by": "stream"})
        if flags:
            out_flags[i] = tuple(flags)
            evidence[i] = ev
    score = fraud_score(((out_flags[i], ev) for i, ev in evidence.items()), params)
    return KernelAssessment(out_flags, evidence, score)


@njit(cache=True)
def _profile(t, km, starts, lo, hi, min_days):  # fmt: skip
    """:func:`pipelines.rules.history.profile_sums` of each vehicle (``starts``: where each begins,
    then the end), added up in vehicle order: the same operations on the same doubles."""
    total_km, total_days = np.zeros(12), np.zeros(12)
    steps_t, steps_d, steps_k = np.empty(len(t)), np.empty(len(t)), np.empty(len(t), np.int64)
    for v in range(len(starts) - 1):
        n, days, kms = 0, 0.0, 0
        for i in range(starts[v], starts[v + 1] - 1):
            d = (t[i + 1] - t[i]) / 86_400_000
            k = km[i + 1] - km[i]
            if lo <= d <= hi and 0 <= k <= 1_000 * d:
                steps_t[n], steps_d[n], steps_k[n] = t[i], d, k
                days += d
                kms += k
                n += 1
        rate = kms / days if days >= min_days else 0.0
        if rate <= 0:
            continue
        part_km, part_days = np.zeros(12), np.zeros(12)
        for j in range(n):
            rest = _pydivmod(steps_t[j] + steps_d[j] * 86_400_000 / 2, _YEAR_MS)[1]
            part = int(_pydivmod(rest, _PART_MS)[0]) % 12
            part_km[part] += steps_k[j] / rate
            part_days[part] += steps_d[j]
        total_km += part_km
        total_days += part_days
    return total_km, total_days


def profile_columns(
    t: np.ndarray, km: np.ndarray, starts: np.ndarray, min_days: float = 180.0
) -> tuple[list[float], list[float]]:
    """The fleet-profile sums of whole vehicles' verified readings, compiled: ``t`` (ms) and ``km``
    (int64) sorted by vehicle, then time, then km; ``starts``: where each vehicle begins, then the
    end. Equal, to the last bit, to :func:`pipelines.rules.history.profile_sums` per vehicle added up
    in that order (a property test holds it)."""
    if len(starts) < 2:
        return [0.0] * 12, [0.0] * 12
    lo, hi = PROFILE_STEP_DAYS
    k, d = _profile(t.astype(np.int64), km.astype(np.int64), starts.astype(np.int64), lo, hi, min_days)
    return k.tolist(), d.tolist()
