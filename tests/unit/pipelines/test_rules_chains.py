"""Odometer chains on hand-built histories: a clone is two series that each go on, interleaved.

Every history here is one a fraud team would recognise: a non-connected clone
seen at garages every six weeks 300 km away, the same clone entered by hand
with no location, two typos months apart, a wind-back (one step), a single outlier.
"""

from __future__ import annotations

import math
from itertools import pairwise

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipelines.rules import EMPTY_STATE, EventFields, assess_vehicle, check_event, sort_key
from pipelines.rules.chains import CHAIN_PARAMS, EMPTY_TRACK, Chain, chain_ids, track, typo_of

DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01
PARIS = (48.8566, 2.3522)


def away(km: float, bearing_deg: float = 45.0) -> tuple[float, float]:
    b = math.radians(bearing_deg)
    lat = PARIS[0] + km * math.cos(b) / 111.2
    lon = PARIS[1] + km * math.sin(b) / (111.2 * math.cos(math.radians((lat + PARIS[0]) / 2)))
    return lat, lon


def reading(
    eid: str,
    day: float,
    km: float,
    source: str,
    where: tuple[float, float] | None,
    kind: str = "odometer_reading",
) -> EventFields:
    lat, lon = where or (None, None)
    return EventFields(eid, kind, T0 + round(day * DAY), source, 0, round(km), lat, lon)


def real_car(days: int = 360, every: int = 7, rate: float = 40.0, km0: float = 60_000) -> list[EventFields]:
    """Read weekly by its owner's garage around Paris."""
    return [
        reading(f"r{i}", d + 0.4, km0 + rate * d, "garage-ind-05", PARIS)
        for i, d in enumerate(range(0, days, every))
    ]


def twin(
    start: int, days: int, every: int, km0: float, rate: float, where: tuple[float, float] | None, source: str
) -> list[EventFields]:
    return [
        reading(f"t{i}", d + 0.6, km0 + rate * (d - start), source, where)
        for i, d in enumerate(range(start, start + days, every))
    ]


def flagged(events: list[EventFields], flag: str) -> list[str]:
    return [c.event.event_id for c in assess_vehicle(events).checked if flag in c.flags]


def speed_flags(events: list[EventFields], flag: str) -> list[str]:
    """What the speed layer raises, one event at a time in order, with its per-vehicle state."""
    state, out = EMPTY_STATE, []
    for e in sorted(events, key=sort_key):
        state, flags, _ = check_event(state, e)
        if flag in flags:
            out.append(e.event_id)
    return out


def test_a_non_connected_clone_seen_every_six_weeks_300_km_away() -> None:
    # the twin: its own odometer (75 % of the real one) at its own rate, at garages 300 km away
    events = real_car() + twin(60, 240, 42, 45_000, 30.0, away(300), "garage-ind-12")
    assessment = assess_vehicle(events)
    hits = [c for c in assessment.checked if "interleaved_odometers" in c.flags]
    assert hits and hits[0].event.event_id == "t1"  # the twin's second reading: two chains in two regions
    evidence = hits[0].evidence["interleaved_odometers"]
    assert evidence["signal"] == "odometer_chains" and 280 <= evidence["distance_km"] <= 320
    assert assessment.score.label == "fraudulent"
    assert assessment.score.reasons[0].startswith("interleaved_odometers")
    # the twin's readings below the real car's are the other odometer, not a rollback or a clocking
    flags = {f for c in assessment.checked for f in c.flags}
    assert not flags & {"rollback_before_sale", "gradual_clocking"}
    # the speed layer raises it on the same event, with nothing but its per-vehicle state
    assert speed_flags(events, "interleaved_odometers")[0] == "t1"


def test_a_clone_entered_by_hand_with_no_location_needs_a_third_reading() -> None:
    events = real_car() + twin(60, 240, 42, 78_000, 25.0, None, "manual-portal")
    assert flagged(events, "interleaved_odometers")[0] == "t2"
    assert speed_flags(events, "interleaved_odometers")[0] == "t2"


def test_a_clone_above_the_real_odometer_seen_every_quarter() -> None:
    events = real_car(every=30) + twin(20, 330, 91, 95_000, 50.0, away(700), "insp-tuv-02")
    assert flagged(events, "interleaved_odometers")
    assert assess_vehicle(events).score.label != "clean"


def test_a_daily_connected_twin_beside_a_connected_car() -> None:
    events = real_car(every=1) + twin(100, 90, 1, 52_000, 80.0, away(150), "cc-borealis")
    hits = flagged(events, "interleaved_odometers")
    assert hits[0] in ("t1", "t2", "r101", "r102")  # as soon as both series have gone on
    assert speed_flags(events, "interleaved_odometers")[:1] == hits[:1]


def test_two_typos_months_apart_are_no_clone() -> None:
    events = real_car()
    typo1 = events[5]._replace(odometer_km=events[5].odometer_km + 30_000)  # a wrong digit
    typo2 = events[40]._replace(odometer_km=events[40].odometer_km + 40_000)
    history = [*events[:5], typo1, *events[6:40], typo2, *events[41:]]
    assessment = assess_vehicle(history)
    assert not flagged(history, "interleaved_odometers")
    assert assessment.score.label == "clean"


def test_a_wind_back_is_one_step_not_two_chains() -> None:
    events = [
        e._replace(odometer_km=e.odometer_km - (25_000 if i >= 20 else 0)) for i, e in enumerate(real_car())
    ]
    flags = {f for c in assess_vehicle(events).checked for f in c.flags}
    assert flags == {"odometer_rollback"}
    ids = chain_ids([(e.event_time_ms, e.odometer_km, e.lat, e.lon) for e in events])  # type: ignore[misc]
    assert ids == [0] * 20 + [1] * (len(events) - 20)


def test_a_single_outlier_stays_a_one_off() -> None:
    events = real_car()
    odd = events[10]._replace(odometer_km=events[10].odometer_km - 20_000)
    history = [*events[:10], odd, *events[11:]]
    ids = chain_ids([(e.event_time_ms, e.odometer_km, e.lat, e.lon) for e in history])  # type: ignore[misc]
    assert ids.count(1) == 1 and ids[10] == 1
    assert assess_vehicle(history).score.label == "clean"


def test_the_track_state_is_small_and_switches_are_counted() -> None:
    s = EMPTY_TRACK
    for km, t in [(1_000, 0), (50_000, 1), (1_040, 2), (50_030, 3), (1_080, 4), (50_060, 5)]:
        s = track(s, km, t * DAY).state
    assert (s.a.n, s.b.n, s.switches) == (3, 3, 5)  # type: ignore[union-attr]


def test_a_twin_seen_for_ten_weeks_then_only_the_real_car_is_a_step() -> None:
    # the twin (by hand, no location, its odometer above) is seen weekly, the real car once in between,
    # then the twin is gone and the real car goes on, read every two months.  The shape is a step with
    # one earlier low reading, the same as a typo months before a wind-back: not called a clone (that
    # would cost real rollbacks), but the drop is flagged and the car is not clean, as the naive check
    twin_readings = twin(0, 70, 7, 240_000, 40.0, None, "manual-portal")
    car = [
        reading(f"r{i}", d + 0.5, 175_000 + 25 * d, "manual-portal", None)
        for i, d in enumerate(range(40, 360, 60))
    ]
    events = sorted(twin_readings + car, key=sort_key)
    assert not flagged(events, "interleaved_odometers")
    assert flagged(events, "odometer_rollback")[:1] == ["r0"]
    assert speed_flags(events, "odometer_rollback")[:1] == ["r0"]
    assert assess_vehicle(events).score.label != "clean"


def test_a_real_car_unseen_for_eleven_weeks_beside_a_busier_twin_above_it_is_still_a_clone() -> None:
    # the real car's own chain is overtaken (the twin reads higher) and silent longer than two months;
    # its next reading is where its own pace puts it, so it is the car coming back, not a stray
    events = [
        reading("r0", 0.2, 74_667, "insp-dekra-07", PARIS),
        reading("r1", 15.3, 74_916, "manual-portal", None),
    ]
    events += [
        reading(f"r{i}", d, 74_916 + 16 * (d - 15.3), "manual-portal", None)
        for i, d in ((2, 93.2), (3, 183), (4, 273))
    ]
    events += twin(70, 290, 7, 94_000, 25.0, None, "manual-portal")
    assert flagged(events, "interleaved_odometers")
    assert assess_vehicle(events).score.label != "clean"


@given(st.integers(1_000, 999_999), st.data())
def test_a_reading_with_any_one_digit_mistyped_is_recognised_as_the_chains(
    km: int, data: st.DataObject
) -> None:
    digits = str(km)
    pos = data.draw(st.integers(0, len(digits) - 1))
    typed_digit = data.draw(
        st.sampled_from([d for d in "0123456789" if d != digits[pos] and (pos or d != "0")])
    )
    typed = int(digits[:pos] + typed_digit + digits[pos + 1 :])
    assume(abs(typed - (km + 20)) > 60)  # a digit mistyped that still reads where the car is: no matter
    chain = Chain(km - 400, T0 - 10 * DAY, km, T0, 5)  # 40 km/day; half a day later it predicts km + 20
    assert typo_of(chain, typed, T0 + DAY // 2, CHAIN_PARAMS)


def test_a_reading_two_digits_off_or_weeks_later_is_not_a_typo() -> None:
    chain = Chain(60_605, T0 - 10 * DAY, 61_005, T0, 5)
    assert not typo_of(chain, 85_005, T0 + DAY, CHAIN_PARAMS)  # two digits: another odometer
    assert not typo_of(chain, 65_005, T0 + 30 * DAY, CHAIN_PARAMS)  # a month on: too far to tell


def twin_read_in_turn(offset: int, lag: int, every: int, rate: float, start: int) -> list[EventFields]:
    """A real car read every ``every`` days; from day ``start`` a twin showing ``offset`` km more (or less),
    driven at the same pace, entered by hand ``lag`` days after each of the real car's readings."""
    events = [
        reading(f"r{i}", d + 0.4, 200_000 + rate * d, "garage-ind-05", None)
        for i, d in enumerate(range(0, 365, every))
    ]
    events += [
        reading(f"t{i}", d + lag + 0.4, 200_000 + offset + rate * (d + lag), "manual-portal", None)
        for i, d in enumerate(range(0, 365, every))
        if d >= start
    ]
    return events


def drops_on_record(events: list[EventFields]) -> int:
    kms = [e.odometer_km for e in sorted(events, key=sort_key) if e.odometer_km is not None]
    return sum(1 for x, y in pairwise(kms) if y < x - 50)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(st.sampled_from([1_000, 10_000, 100_000]), st.integers(300, 120_000)),
    st.sampled_from([1, -1]),
    st.integers(1, 6),
    st.sampled_from([7, 14, 30]),
    st.floats(15, 80),
    st.integers(20, 200),
)
def test_a_twin_cannot_hide_its_readings_as_mistypes_or_noise(
    size: int, sign: int, lag: int, every: int, rate: float, start: int
) -> None:
    """As a clone's operator: choose the twin's odometer (exactly 10^k off, so that every reading is one
    digit from the real car's; or a few hundred km off, within each chain's allowance) and when it is read.
    Whenever the odometer goes down on record three times or more (what the naive check sees), the car
    is not scored clean and is named a clone."""
    events = twin_read_in_turn(sign * size, lag, every, rate, start)
    assume(drops_on_record(events) >= 3)
    assessment = assess_vehicle(events)
    assert assessment.score.label != "clean"
    assert any("interleaved_odometers" in c.flags for c in assessment.checked)


def test_a_twin_a_few_hundred_km_off_is_named_by_its_repeated_drops() -> None:
    events = twin_read_in_turn(1_000, 3, 7, 40.0, 70)
    found = [
        c.evidence["interleaved_odometers"]
        for c in assess_vehicle(events).checked
        if "interleaved_odometers" in c.flags
    ]
    assert found and {e["signal"] for e in found} == {"repeated_drops"}
    assert found[0]["drops"] >= 3


def test_two_mistypes_in_a_year_are_not_a_second_odometer() -> None:
    events = real_car(every=7)
    for i in (10, 30):  # two readings typed 900 km low, each undone by the next
        e = events[i]
        events[i] = e._replace(odometer_km=e.odometer_km - 900)
    assessment = assess_vehicle(events)
    assert not any("interleaved_odometers" in c.flags for c in assessment.checked)
    assert assessment.score.label == "clean"
