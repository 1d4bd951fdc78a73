"""Odometer chains: a vehicle's readings split into the fewest series that each behave like one odometer.

One car's odometer readings form one *chain*: never lower than the last one
(beyond the tolerance between sources) and rising at a rate the car keeps up.
A reading that cannot continue the chain starts another.  What the chains look
like says what happened:

* one chain: an honest history;
* a second chain of one reading, the first one going on: a one-off error (a typo);
  also when the typo was the first chain's last reading (a jump ahead of its pace,
  the next reading going on from before it): the typo is set apart as the one-off;
* a second chain that goes on while the first stops: a step (a wind-back, a
  swapped instrument cluster);
* two chains that each go on (``min_readings`` each, or ``apart_min_readings``
  when they are seen in two regions), interleaved in time (the readings switch
  from one to the other and back): two odometers under one identity, a **clone**.
  Two typos months apart can look like a second odometer seen twice; a third
  reading, or a second region, tells them apart.

:func:`track` assigns one reading at a time with two chain slots, the speed
layer's per-vehicle state (:class:`pipelines.rules.stream.VehicleState`), and
says when the readings switch between two persistent chains; the batch layer
applies the same function over the whole history
(:func:`pipelines.rules.stream.history_check`) and reads the chains back with
:func:`chain_ids` to leave the other car's readings out of the rate rules.

A reading *fits* a chain when it is not below the chain's last reading and
the distance since is within what the chain's own rate allows
(``chain_rate_factor`` times its rate, at least ``chain_min_km_per_day``, plus
``chain_slack_km`` for a long day's drive); among the chains it fits, it joins
the one whose own rate predicts it best, a chain in another region
(``region_km``) counting ``region_cost_km`` further; a chain of one reading
(maybe a typo) takes only a reading the persistent chain cannot.

Two readings join no chain (:func:`track` leaves them out): one that would
bring back a chain stopped before the last one began, when one digit changed
puts it where the last chain predicts (:func:`typo_of`, within ``typo_days``);
and one that only a chain the car has driven past and not shown for
``gone_days`` could take, when the other chain's rate predicts it better
(``_stray``: a late entry of the car that went on).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

DAY_MS = 86_400_000


class Chain(NamedTuple):
    """One odometer series: its first and last reading, how many, where it was last seen."""

    first_km: int
    first_ms: int
    km: int
    ms: int
    n: int
    lat: float | None = None
    lon: float | None = None
    #: the step from the reading before the last to the last, packed in one int (a vehicle's state is
    #: kept for millions of vehicles): ``(ms - prev_ms) << 32 | (km - prev_km + 2**31)``; 0: none yet
    step: int = 0

    @property
    def prev_km(self) -> int:
        """The reading before the last (a chain of two or more readings)."""
        return self.km - ((self.step & _KM_MASK) - _KM_OFFSET)

    @property
    def prev_ms(self) -> int:
        return self.ms - (self.step >> 32)


_KM_OFFSET, _KM_MASK = 2**31, 2**32 - 1


def _step(km_from: int, ms_from: int, km: int, ms: int) -> int:
    return (ms - ms_from) << 32 | (km - km_from + _KM_OFFSET)


class ChainParams(NamedTuple):
    tolerance_km: int = 50  # reading noise between sources (as the rollback rule)
    slack_km: float = 1_000.0  # a long day's drive on top of the chain's rate
    rate_factor: float = 4.0  # a chain may go this many times faster than its own rate ...
    min_km_per_day: float = 150.0  # ... and at least this fast
    default_km_per_day: float = 300.0  # the allowance of a chain with no rate yet
    prior_km_per_day: float = 40.0  # the prediction of a chain with no rate yet
    rate_days: float = 7.0  # a chain has a rate once it spans this many days
    region_km: float = 150.0  # two places further apart than this are two regions
    region_cost_km: float = 1_000.0  # how much further a chain in another region counts
    min_readings: int = 3  # a chain persists from this many readings ...
    apart_min_readings: int = 2  # ... or this many when the two chains are seen in two regions
    #: a chain that stopped when the other began (a step) is rejoined only at most this many times its rate
    stopped_rate_factor: float = 2.0
    #: ... and, once the other has driven past it, not at all after a silence of this many of its own gaps
    overtaken_gap_factor: float = 3.0
    #: ... and, silent this many days, not by a reading the other's rate predicts better (a stray of the other)
    gone_days: float = 60.0
    #: a reading this many days or fewer after a chain's last, one digit away from its prediction, is its typo
    typo_days: float = 14.0


class Tracked(NamedTuple):
    """Two chain slots, which one the last reading joined, how often the readings switched."""

    a: Chain | None = None
    b: Chain | None = None
    last: int = -1  # 0 (a), 1 (b), -1 (none yet)
    switches: int = 0


EMPTY_TRACK = Tracked()


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 12_742.0 * math.asin(min(1.0, math.sqrt(a)))


def _rate(c: Chain, p: ChainParams) -> float:
    span = (c.ms - c.first_ms) / DAY_MS
    return (c.km - c.first_km) / span if span >= p.rate_days else p.prior_km_per_day


def _too_fast_for_stopped(c: Chain, other: Chain, km: int, t: int, p: ChainParams) -> bool:
    """``c`` stopped before ``other`` began (a step), and rejoining it needs more than
    ``stopped_rate_factor`` times its own rate: a high typo months later, not the chain going on."""
    if c.ms >= other.first_ms or t <= c.ms:
        return False
    return km - c.km > p.tolerance_km + p.stopped_rate_factor * _rate(c, p) * (t - c.ms) / DAY_MS


def _overtaken(c: Chain, other: Chain, t: int, p: ChainParams) -> bool:
    """``c`` stopped when ``other`` began (a step), ``other`` has since reached ``c``'s last reading and
    ``c`` has been silent for ``overtaken_gap_factor`` of its own gaps: the car went on as ``other`` (a
    rollback it has driven past), so a reading both could continue is ``other``'s, not ``c`` resuming.
    (A sparse car beside a busy twin is silent for about one of its gaps, and resumes.)"""
    if c.ms >= other.first_ms or other.km < c.km or c.n < 2:
        return False
    return t - c.ms > p.overtaken_gap_factor * (c.ms - c.first_ms) / (c.n - 1)


def _stray(c: Chain, other: Chain, km: int, t: int, p: ChainParams) -> bool:
    """``c`` (overtaken) has been silent ``gone_days`` and ``other``'s rate predicts the reading better than
    ``c``'s own, though ``other`` cannot take it (it is below ``other``'s last): the reading is a stray of
    the car that went on as ``other`` (a late entry, a typo), not ``c`` coming back."""
    if t - c.ms <= p.gone_days * DAY_MS:
        return False
    return _miss(other, km, t, p) < _miss(c, km, t, p)


def _miss(c: Chain, km: int, t: int, p: ChainParams) -> float:
    """How far (km) the reading is from where the chain's own rate puts it."""
    return abs(km - c.km - _rate(c, p) * (t - c.ms) / DAY_MS)


def fit_cost(c: Chain, km: int, t: int, p: ChainParams) -> float | None:
    """How far (km) the chain's own rate puts this reading from where it predicts; None if it cannot continue it."""
    days = (t - c.ms) / DAY_MS
    span = (c.ms - c.first_ms) / DAY_MS
    if span >= p.rate_days:
        rate = (c.km - c.first_km) / span
        cap = max(p.rate_factor * rate, p.min_km_per_day)
    else:
        rate, cap = p.prior_km_per_day, p.default_km_per_day
    if days >= 0:
        ahead = km - c.km
        if ahead < -p.tolerance_km or ahead > p.slack_km + cap * days:
            return None
    else:  # a late reading is an earlier point of the chain
        behind = c.km - km
        if behind < -p.tolerance_km or behind > p.slack_km - cap * days:
            return None
    return abs(km - c.km - rate * days)


def _region_cost(c: Chain, lat: float | None, lon: float | None, p: ChainParams) -> float:
    if lat is None or lon is None or c.lat is None or c.lon is None:
        return 0.0
    return p.region_cost_km if haversine_km(lat, lon, c.lat, c.lon) > p.region_km else 0.0


def _extend(c: Chain, km: int, t: int, lat: float | None, lon: float | None) -> Chain:
    if t < c.ms:  # a late reading: one more reading, the chain's last stays
        return c._replace(n=c.n + 1)
    if lat is None or lon is None:
        lat, lon = c.lat, c.lon
    return Chain(c.first_km, c.first_ms, km, t, c.n + 1, lat, lon, _step(c.km, c.ms, km, t))


def _set_apart(c: Chain, km: int, t: int, lat: float | None, lon: float | None) -> Chain:
    """``c`` with its last reading replaced by this one (the last one becomes a one-off of its own)."""
    if lat is None or lon is None:
        lat, lon = c.lat, c.lon
    return Chain(c.first_km, c.first_ms, km, t, c.n, lat, lon, _step(c.prev_km, c.prev_ms, km, t))


def _without_last(c: Chain, km: int, t: int, p: ChainParams) -> bool:
    """True when the reading continues ``c`` once ``c``'s last reading is left out: that last one jumped
    ahead of the chain (a typo), and the reading is where the chain goes on."""
    if c.n < p.min_readings or t < c.ms:
        return False
    prev_km, prev_ms = c.prev_km, c.prev_ms
    before = Chain(c.first_km, c.first_ms, prev_km, prev_ms, c.n - 1, c.lat, c.lon)
    span = (prev_ms - c.first_ms) / DAY_MS
    rate = (prev_km - c.first_km) / span if span >= p.rate_days else p.prior_km_per_day
    jump_days = max((c.ms - prev_ms) / DAY_MS, 1.0)
    if c.km - prev_km <= p.tolerance_km + p.rate_factor * rate * jump_days:
        return False  # the last reading kept the chain's pace: not a jump to set apart
    return fit_cost(before, km, t, p) is not None


#: The default chain parameters.
CHAIN_PARAMS = ChainParams()


def _persistent(a: Chain, b: Chain, p: ChainParams) -> bool:
    """Both chains have gone on: ``min_readings`` each, or ``apart_min_readings`` seen in two regions."""
    if min(a.n, b.n) >= p.min_readings:
        return True
    if min(a.n, b.n) < p.apart_min_readings or None in (a.lat, a.lon, b.lat, b.lon):
        return False
    return haversine_km(a.lat, a.lon, b.lat, b.lon) > p.region_km  # type: ignore[arg-type]


def typo_of(c: Chain, km: int, t: int, p: ChainParams) -> bool:
    """One digit of the reading changed puts it where ``c``'s own rate predicts (within ``tolerance_km``
    and half the distance the chain drives meanwhile): a reading of ``c`` mistyped, the commonest error
    of a reading entered by hand."""
    rate = _rate(c, p)
    days = max((t - c.ms) / DAY_MS, 0.0)
    if days > p.typo_days:
        return False
    predicted, window = c.km + rate * days, p.tolerance_km + 0.5 * rate * days
    place = 1
    while place <= km:
        digit = km // place % 10
        fixed = km + (min(9, max(0, digit + round((predicted - km) / place))) - digit) * place
        if fixed != km and abs(fixed - predicted) <= window:
            return True
        place *= 10
    return False


def _costs(
    a: Chain,
    b: Chain | None,
    km: int,
    t: int,
    lat: float | None,
    lon: float | None,
    p: ChainParams,
    last: int,
) -> tuple[float | None, float | None]:
    """What continuing each slot with this reading costs (km off its prediction); None: it may not."""
    cost_a = fit_cost(a, km, t, p)
    cost_b = None if b is None else fit_cost(b, km, t, p)
    other = b if b is not None and b.n >= 2 and a.n >= 2 else None  # b, when both chains persist
    # a reading that would bring back a chain stopped before the last one began (a step), and that one
    # digit changed puts where the last chain predicts: the last chain's reading mistyped. (Only a stopped
    # chain: between two live ones, a twin shown 10,000 km off would pass every reading for a mistype.)
    if other is not None and last in (0, 1):
        mine, theirs = (a, other) if last == 0 else (other, a)
        if (cost_a, cost_b)[last] is None and theirs.ms < mine.first_ms and typo_of(mine, km, t, p):
            cost_a, cost_b = (cost_a, None) if last == 0 else (None, cost_b)
    if other is not None and cost_a is not None and _too_fast_for_stopped(a, other, km, t, p):
        cost_a = None
    if other is not None and cost_b is not None and _too_fast_for_stopped(other, a, km, t, p):
        cost_b = None
    if (
        other is not None
        and _overtaken(a, other, t, p)
        and (cost_b is not None or _stray(a, other, km, t, p))
    ):
        cost_a = None
    elif (
        other is not None
        and _overtaken(other, a, t, p)
        and (cost_a is not None or _stray(other, a, km, t, p))
    ):
        cost_b = None
    if b is None or cost_a is None or cost_b is None:
        return cost_a, cost_b
    if (a.n >= 2) != (b.n >= 2):  # a one-off takes only what the persistent chain cannot
        return (cost_a, None) if a.n >= 2 else (None, cost_b)
    # both could continue: the region decides when the rates cannot
    return cost_a + _region_cost(a, lat, lon, p), cost_b + _region_cost(b, lat, lon, p)


class Step(NamedTuple):
    state: Tracked
    joined: int  # the slot the reading joined (0 or 1), -1 when it fits neither persistent chain
    interleaved: bool  # the reading switched between two persistent chains (the second switch or later)


def track(
    s: Tracked,
    km: int,
    t: int,
    lat: float | None = None,
    lon: float | None = None,
    p: ChainParams = CHAIN_PARAMS,
) -> Step:
    """Assign one trusted reading to a chain slot.

    Readings come in time order (the batch) or nearly (the speed layer): a late
    one is fitted as an earlier point of a chain and counts as one of its
    readings; the switches are counted in the order readings come.
    """
    a, b = s.a, s.b
    if a is None:
        return Step(Tracked(Chain(km, t, km, t, 1, lat, lon), None, 0, 0), 0, False)
    if b is None and fit_cost(a, km, t, p) is not None:  # one chain going on: most readings
        return Step(Tracked(_extend(a, km, t, lat, lon), None, 0, s.switches), 0, False)
    cost_a, cost_b = _costs(a, b, km, t, lat, lon, p, s.last)
    if cost_a is not None and (cost_b is None or cost_a <= cost_b):
        a, joined = _extend(a, km, t, lat, lon), 0
    elif cost_b is not None:
        assert b is not None
        b, joined = _extend(b, km, t, lat, lon), 1
    elif (b is None or b.n < 2) and _without_last(a, km, t, p):  # a's last reading was the one-off
        a, b, joined = _set_apart(a, km, t, lat, lon), Chain(a.km, a.ms, a.km, a.ms, 1, a.lat, a.lon), 0
    elif b is not None and a.n < 2 and _without_last(b, km, t, p):  # b's last reading was the one-off
        a, b, joined = Chain(b.km, b.ms, b.km, b.ms, 1, b.lat, b.lon), _set_apart(b, km, t, lat, lon), 1
    elif b is None or b.n < 2:  # a new series; a one-off second chain is forgotten
        b, joined = Chain(km, t, km, t, 1, lat, lon), 1
    elif a.n < 2:
        a, joined = Chain(km, t, km, t, 1, lat, lon), 0
    else:  # a third series beside two persistent ones: left out
        return Step(s, -1, False)
    switches = s.switches + (1 if s.last not in (-1, joined) else 0)
    persistent = b is not None and _persistent(a, b, p)
    interleaved = persistent and switches >= 2 and joined != s.last
    return Step(Tracked(a, b, joined, switches), joined, interleaved)


def chain_ids(
    readings: Iterable[tuple[int, int, float | None, float | None]], p: ChainParams = CHAIN_PARAMS
) -> list[int]:
    """For each reading ``(time, km, lat, lon)`` in time order, the chain it joined: 0, 1, 2, ... (-1: none).

    The same assignment as :func:`track`; a slot that starts a new series gets
    a new chain number, so a forgotten one-off keeps its own.
    """
    state, ids, slot_id, next_id = EMPTY_TRACK, [], [-1, -1], 0
    for t, km, lat, lon in readings:
        before = state
        state, joined, _ = track(state, km, t, lat, lon, p)
        if joined == -1:
            ids.append(-1)
            continue
        new = (before.a, before.b)[joined] is None or (state.a, state.b)[joined].n == 1  # type: ignore[union-attr]
        if new:
            slot_id[joined], next_id = next_id, next_id + 1
        other = (state.a, state.b)[1 - joined]
        if other is not None and other.n == 1 and other is not (before.a, before.b)[1 - joined]:
            slot_id[1 - joined], next_id = next_id, next_id + 1  # a typo set apart from the chain it ended
        ids.append(slot_id[joined])
    return ids
