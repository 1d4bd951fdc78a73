"""Fraud rules on hand-built histories, and the order-independence property."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.dataset import FRAUD_FLAGS
from pipelines.errors import PccValueError
from pipelines.rules import (
    EMPTY_STATE,
    EventFields,
    apply_sorted,
    assess_vehicle,
    check_event,
    fields_from,
    fraud_score,
    history_check,
    history_flags,
    sort_key,
)
from pipelines.rules.fraud import FLAG_WEIGHTS, FraudParams, odometer_standing

DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01
PARIS = (48.8566, 2.3522)
BERLIN = (52.52, 13.405)


def ev(
    n: int, day: float, km: int | None = None, kind: str = "odometer_reading", **kw: object
) -> EventFields:
    fields: dict[str, object] = {
        "event_id": kw.pop("event_id", f"e{n}"),
        "event_type": kind,
        "event_time_ms": T0 + round(day * DAY),
        "source_id": "cc-aurora",
        "log_index": n,
        "odometer_km": km,
    }
    fields.update(kw)
    return EventFields(**fields)  # type: ignore[arg-type]


def flags_of(events: list[EventFields]) -> dict[str, tuple[str, ...]]:
    return dict(history_flags(events))


def test_flags_are_the_shared_vocabulary() -> None:
    assert set(FLAG_WEIGHTS) == set(FRAUD_FLAGS)


def test_a_normal_life_raises_nothing() -> None:
    events = [ev(i, i, 40_000 + 45 * i, lat=PARIS[0], lon=PARIS[1]) for i in range(30)]
    assert all(flags == () for _, flags in history_flags(events))


def test_rollback_is_flagged_once_with_the_drop_as_evidence() -> None:
    events = [ev(0, 0, 50_000), ev(1, 1, 50_100), ev(2, 2, 20_000), ev(3, 3, 20_060), ev(4, 4, 20_100)]
    checked = history_check(events)
    assert [c.flags for c in checked] == [(), (), ("odometer_rollback",), (), ()]
    assert checked[2].evidence["odometer_rollback"]["drop_km"] == 30_100


def test_small_disagreement_between_sources_is_not_a_rollback() -> None:
    events = [ev(0, 0, 50_000), ev(1, 0.1, 49_970, source_id="garage-net-01")]
    assert flags_of(events) == {"e0": (), "e1": ()}


def test_a_typo_is_flagged_once_and_does_not_poison_later_readings() -> None:
    events = [ev(0, 0, 45_123), ev(1, 30, 95_123), ev(2, 60, 45_900), ev(3, 90, 46_700)]
    assert flags_of(events) == {"e0": (), "e1": ("implausible_rate",), "e2": (), "e3": ()}


def test_implausible_rate_depends_on_the_time_between_readings() -> None:
    assert flags_of([ev(0, 0, 10_000), ev(1, 1, 14_000)])["e1"] == ("implausible_rate",)
    assert flags_of([ev(0, 0, 10_000), ev(1, 1, 11_500)])["e1"] == ()
    assert flags_of([ev(0, 0, 10_000), ev(1, 3, 14_000)])["e1"] == ()
    assert flags_of([ev(0, 0, 10_000), ev(1, 30, 60_000)])["e1"] == ("implausible_rate",)


def test_activity_after_a_wreck() -> None:
    events = [
        ev(0, 5, 60_000, kind="maintenance"),
        ev(1, 10, None, kind="wreck_declaration"),
        ev(2, 40, 61_000, kind="maintenance"),
    ]
    assert flags_of(events) == {"e0": (), "e1": (), "e2": ("activity_after_wreck",)}


def test_a_late_wreck_declaration_still_flags_what_comes_after_it() -> None:
    state, _, _ = check_event(EMPTY_STATE, ev(0, 20, 61_000))
    state, flags, _ = check_event(state, ev(1, 10, None, kind="wreck_declaration"))  # late
    assert flags == ()
    state, flags, _ = check_event(state, ev(2, 15, None, kind="repair"))  # late, after the wreck
    assert flags == ("activity_after_wreck",)
    _, flags, _ = check_event(state, ev(3, 25, 61_100))
    assert flags == ("activity_after_wreck",)


def test_a_late_reading_is_not_compared_with_a_later_one() -> None:
    state, _, _ = check_event(EMPTY_STATE, ev(0, 10, 50_000))
    state, flags, _ = check_event(state, ev(1, 5, 40_000))  # older and lower: normal
    assert flags == ()
    _, flags, _ = check_event(state, ev(2, 11, 50_040))
    assert flags == ()


def test_impossible_travel_needs_distance_and_speed() -> None:
    def two(hours: float, second: tuple[float, float]) -> tuple[str, ...]:
        a = ev(0, 0, lat=PARIS[0], lon=PARIS[1])
        b = ev(1, hours / 24, lat=second[0], lon=second[1])
        return flags_of([a, b])["e1"]

    assert two(1, BERLIN) == ("impossible_travel",)  # 878 km in an hour
    assert two(12, BERLIN) == ()  # a day's drive
    assert two(0.01, (PARIS[0] + 0.2, PARIS[1])) == ()  # 22 km: location noise, not travel


LYON = (45.764, 4.8357)  # 392 km from Paris
WARSAW = (52.2297, 21.0122)  # 1,367 km


def test_a_records_time_is_when_it_was_written_so_it_gives_the_car_hours() -> None:
    """A garage's invoice, an inspection report or an insurer's claim carries the time it was written:
    the car was at that place within ``record_slack_h`` (2 h) of it. Two live readings carry no slack."""

    def flags(minutes: float, first: str, second: str, where: tuple[float, float] = LYON) -> tuple[str, ...]:
        a = ev(0, 0, kind=first, lat=PARIS[0], lon=PARIS[1])
        b = ev(1, minutes / 1_440, kind=second, lat=where[0], lon=where[1])
        return flags_of([a, b])["e1"]

    reading = "odometer_reading"
    assert flags(20, reading, reading) == ("impossible_travel",)  # a twin's telematics 392 km away
    assert flags(20, reading, "maintenance") == ()  # the garage wrote the invoice up to 2 h after
    assert flags(20, "inspection", reading) == ()
    assert flags(60, "maintenance", "inspection") == ()  # 392 km within 5 h of slack and interval
    assert flags(20, reading, "maintenance", BERLIN) == ("impossible_travel",)  # 878 km: out of reach
    assert flags(20, "accident_declaration", "maintenance", BERLIN) == ()  # 878 km within 4 h 20 min
    assert flags(20, "accident_declaration", "maintenance", WARSAW) == ("impossible_travel",)
    no_slack = FraudParams(record_slack_h=0.0)
    a, b = (
        ev(0, 0, lat=PARIS[0], lon=PARIS[1]),
        ev(1, 20 / 1_440, kind="maintenance", lat=LYON[0], lon=LYON[1]),
    )
    assert dict(history_flags([a, b], no_slack))["e1"] == ("impossible_travel",)


def test_a_replay_is_flagged_as_duplicate_only() -> None:
    events = [ev(0, 0, 50_000), ev(1, 1, 50_040), ev(2, 1, 50_040, event_id="e1")]
    assert history_flags(events) == [("e0", ()), ("e1", ()), ("e1", ("duplicate_event",))]


def test_the_state_remembers_a_bounded_number_of_ids() -> None:
    params = FraudParams(recent_ids=4)
    state = EMPTY_STATE
    for i in range(10):
        state, _, _ = check_event(state, ev(i, i, 1_000 + i), params)
    assert len(state.recent) == 8 * 4
    _, flags, _ = check_event(state, ev(20, 20, 2_000, event_id="e9"), params)
    assert flags == ("duplicate_event",)
    _, flags, _ = check_event(state, ev(21, 21, 2_000, event_id="e0"), params)
    assert flags == ()  # forgotten: too old for the stream; the dataset is unique by id anyway


def test_an_unverified_reading_is_checked_but_never_trusted() -> None:
    events = [ev(0, 0, 50_000), ev(1, 1, 10_000, verified=False), ev(2, 2, 50_080), ev(3, 3, 10_100)]
    assert flags_of(events) == {
        "e0": (),
        "e1": ("odometer_rollback",),
        "e2": (),
        "e3": ("odometer_rollback",),
    }


def test_rollback_before_sale_only_within_the_window() -> None:
    def sale_flags(rollback_day: int) -> tuple[str, ...]:
        events = [
            ev(0, 0, 120_000),
            ev(1, rollback_day, 60_000),
            ev(2, 300, 60_500, kind="ownership_change"),
        ]
        checked = {c.event.event_id: c for c in assess_vehicle(events).checked}
        return checked["e2"].flags

    assert sale_flags(280) == ("rollback_before_sale",)
    assert sale_flags(100) == ("rollback_before_sale",)  # 200 days: the seller's year
    assert sale_flags(20) == ()  # 280 days: beyond the window (270, tuned)


def test_gradual_clocking_fires_on_a_rate_drop_and_not_on_a_steady_car() -> None:
    rng = random.Random(7)
    steady, clocked = [], []
    km_s = km_c = 30_000.0
    for i in range(24):  # a reading every 30 days for two years
        steady.append(ev(i, 30 * i, round(km_s)))
        clocked.append(ev(i, 30 * i, round(km_c)))
        rate = 40 * rng.uniform(0.85, 1.15)
        km_s += 30 * rate
        km_c += 30 * rate * (0.3 if i >= 12 else 1.0)
    assert all(not c.flags for c in assess_vehicle(steady).checked)
    flagged = [c for c in assess_vehicle(clocked).checked if "gradual_clocking" in c.flags]
    assert [c.event.event_id for c in flagged] == ["e23"]
    evidence = flagged[0].evidence["gradual_clocking"]
    assert evidence["km_per_day_after"] < 0.5 * evidence["km_per_day_before"]


def standing_of(events: list[EventFields]) -> dict[str, str]:
    return odometer_standing(history_check(events))


def test_a_one_off_low_reading_is_a_typo_and_leaves_the_car_clean() -> None:
    events = [ev(0, 0, 40_000), ev(1, 30, 41_200), ev(2, 60, 14_400), ev(3, 90, 43_600)]
    assert standing_of(events) == {"e2": "one_off"}
    assessment = assess_vehicle(events)
    assert assessment.checked[2].flags == ("odometer_rollback",)  # still flagged, as the speed layer did
    assert assessment.checked[2].evidence["odometer_rollback"]["standing"] == "one_off"
    assert assessment.score.label == "clean"


def test_a_one_off_high_reference_is_a_typo_too() -> None:
    # 52,100 is accepted (plausible over 30 days) but the car really was near 43,500
    events = [ev(0, 0, 40_000), ev(1, 30, 41_200), ev(2, 60, 52_400), ev(3, 90, 43_600), ev(4, 120, 44_800)]
    assert standing_of(events) == {"e3": "reference_one_off"}
    sold = [*events, ev(5, 125, 45_000, kind="ownership_change")]
    assessment = assess_vehicle(sold)
    assert assessment.score.label == "clean"
    assert all("rollback_before_sale" not in c.flags for c in assessment.checked)


def test_a_replay_of_the_reading_that_shows_a_reference_typo_is_only_a_duplicate() -> None:
    # the same car as above; the 43,600 reading that shows 52,400 to be a typo reaches the platform twice
    events = [ev(0, 0, 40_000), ev(1, 30, 41_200), ev(2, 60, 52_400), ev(3, 90, 43_600), ev(4, 120, 44_800)]
    replayed = [*events, ev(1003, 90, 43_600, event_id="e3")]
    assert standing_of(replayed) == {"e3": "reference_one_off"}
    # this raised StopIteration: the replay shares e3's standing but not its odometer flag
    assessment = assess_vehicle(replayed)
    assert [c.flags for c in assessment.checked if c.event.event_id == "e3"] == [
        ("odometer_rollback",),
        ("duplicate_event",),
    ]
    # it weighs as the replay of any other reading would
    other_replay = assess_vehicle([*events, ev(1001, 30, 41_200, event_id="e1")])
    assert assessment.score == other_replay.score
    assert {f for c in assessment.checked for f in c.flags} == {"odometer_rollback", "duplicate_event"}


def test_a_rollback_the_later_readings_follow_is_confirmed() -> None:
    events = [ev(0, 0, 90_000), ev(1, 30, 91_200), ev(2, 60, 41_000), ev(3, 90, 42_200)]
    assert standing_of(events) == {"e2": "confirmed"}
    assert assess_vehicle(events).score.label == "suspicious"
    assert standing_of(events[:3]) == {"e2": "unconfirmed"}  # nothing after it yet
    assert assess_vehicle(events[:3]).score.label == "clean"


def test_a_typo_before_a_sale_is_no_rollback_before_sale() -> None:
    events = [
        ev(0, 0, 40_000),
        ev(1, 30, 41_200),
        ev(2, 60, 4_240),
        ev(3, 70, 42_800, kind="ownership_change"),
    ]
    assessment = assess_vehicle(events)
    assert [c.flags for c in assessment.checked][2:] == [("odometer_rollback",), ()]
    assert assessment.score.label == "clean"


def test_impossible_travel_weighs_with_the_distance() -> None:
    near = (PARIS[0] + 1.5, PARIS[1])  # 167 km in half an hour

    def label(where: tuple[float, float]) -> tuple[tuple[str, ...], str]:
        events = [ev(0, 0, lat=PARIS[0], lon=PARIS[1]), ev(1, 0.5 / 24, lat=where[0], lon=where[1])]
        assessment = assess_vehicle(events)
        return assessment.checked[1].flags, assessment.score.label

    assert label(near) == (("impossible_travel",), "clean")
    assert label(BERLIN) == (("impossible_travel",), "suspicious")  # 878 km


def test_a_replay_the_speed_layer_flagged_makes_the_car_suspicious() -> None:
    events = [ev(0, 0, 50_000), ev(1, 1, 50_040)]
    assert assess_vehicle(events).score.label == "clean"
    replayed = assess_vehicle(events, stream_flags={"e1": ["duplicate_event"]})
    assert replayed.checked[1].flags == ("duplicate_event",)
    assert replayed.score.label == "suspicious" and replayed.score.reasons == ("duplicate_event",)


def _readings(rates: list[float], every: int = 30, km: float = 60_000.0) -> list[EventFields]:
    out = []
    for i, rate in enumerate(rates):
        out.append(ev(i, every * i, round(km), source_id="manual-portal"))
        km += every * rate
    return out


def test_gradual_clocking_needs_two_months_each_side() -> None:
    clocked = _readings([40, 40, 40, 14, 14, 14, 14])  # counts 35 % from day 90 on
    flagged = [c for c in assess_vehicle(clocked).checked if "gradual_clocking" in c.flags]
    assert [c.event.event_id for c in flagged] == ["e6"]
    assert flagged[0].evidence["gradual_clocking"]["ratio"] < 0.4
    assert all(not c.flags for c in assess_vehicle(clocked[:3] + clocked[3:4]).checked)  # 30 days after


def test_a_seasonal_slowdown_is_no_clocking() -> None:
    assert all(not c.flags for c in assess_vehicle(_readings([40, 44, 46, 40, 34, 30, 30, 32])).checked)


def test_a_rollback_is_no_rate_drop() -> None:
    # the same steady rate, wound back by 30,000 km at day 100: a rollback, not clocking
    events = [ev(i, 20 * i, 50_000 + 800 * i - (30_000 if i >= 5 else 0)) for i in range(14)]
    flags = {f for c in assess_vehicle(events).checked for f in c.flags}
    assert flags == {"odometer_rollback"}


def test_a_typo_does_not_hide_or_fake_a_clocking() -> None:
    clocked = _readings([40, 40, 40, 14, 14, 14, 14])
    with_typo = [*clocked[:5], clocked[5]._replace(odometer_km=9_000), clocked[6]]
    assert "gradual_clocking" in {f for c in assess_vehicle(with_typo).checked for f in c.flags}
    steady = _readings([40] * 8)
    high = [*steady[:3], steady[3]._replace(odometer_km=steady[3].odometer_km + 2_000), *steady[4:]]
    assert "gradual_clocking" not in {f for c in assess_vehicle(high).checked for f in c.flags}


def test_score_labels() -> None:
    assert fraud_score([]) == (0.0, (), "clean")
    typo = fraud_score([(("odometer_rollback",), {"odometer_rollback": {"drop_km": 900, "tier": 4}})])
    assert typo.label == "clean" and 0 < typo.score < 0.35
    sold = fraud_score(
        [
            (("odometer_rollback",), {"odometer_rollback": {"drop_km": 41_200, "tier": 1}}),
            (("rollback_before_sale",), {}),
        ]
    )
    assert sold.label == "fraudulent"
    assert sold.reasons[0] == "rollback_before_sale"
    assert "odometer_rollback (drop 41,200 km)" in sold.reasons
    with pytest.raises(PccValueError, match="unknown fraud flag 'bogus'"):
        fraud_score([(("bogus",), {})])


@given(
    st.lists(st.lists(st.sampled_from(FRAUD_FLAGS), max_size=4), max_size=20), st.sampled_from(FRAUD_FLAGS)
)
def test_score_is_in_unit_interval_and_grows_with_evidence(flag_lists: list[list[str]], extra: str) -> None:
    items = [(tuple(flags), {}) for flags in flag_lists]
    score = fraud_score(items)
    assert 0.0 <= score.score <= 1.0
    assert fraud_score([*items, ((extra,), {})]).score >= score.score


def test_fields_from_an_envelope_and_a_dataset_row() -> None:
    envelope = {
        "event_id": "x",
        "event_type": "odometer_reading",
        "source_id": "cc-aurora",
        "event_time": "2024-01-01T00:00:01.500Z",
        "payload": {"odometer_km": 12, "location": {"lat": 1.5, "lon": 2.5}},
        "proof": {"log_index": 9},
    }
    assert fields_from(envelope) == EventFields(
        "x", "odometer_reading", T0 + 1_500, "cc-aurora", 9, 12, 1.5, 2.5
    )
    row = {**envelope, "proof": None, "payload": "{}", "odometer_km": 12, "lat": None, "lon": None, "log_index": 3,
           "verification": "unverified", "event_time": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)}  # fmt: skip
    f = fields_from(row, tier=2)
    assert (f.event_time_ms, f.log_index, f.verified, f.tier, f.lat) == (T0, 3, False, 2, None)
    with pytest.raises(PccValueError, match="event x: event_time 'yesterday'"):
        fields_from({**envelope, "event_time": "yesterday"})


# -- order independence ------------------------------------------------------------

_event = st.builds(
    lambda day, km, kind, where, src: (day, km, kind, where, src),
    st.integers(0, 60),
    st.one_of(st.none(), st.integers(0, 200_000)),
    st.sampled_from(["odometer_reading", "maintenance", "wreck_declaration", "ownership_change"]),
    st.one_of(st.none(), st.sampled_from([PARIS, BERLIN, (48.9, 2.4)])),
    st.sampled_from(["cc-aurora", "garage-net-01", "ins-mutua"]),
)


def _history(raw: list[tuple], replays: list[int]) -> list[EventFields]:
    events, next_index = [], {}
    for n, (day, km, kind, where, src) in enumerate(raw):
        lat, lon = where or (None, None)
        idx = next_index.get(src, 0)
        next_index[src] = idx + 1
        events.append(EventFields(f"e{n}", kind, T0 + day * DAY, src, idx, km, lat, lon))
    for r in replays:  # the same event appended again to its source's log
        if r < len(events):
            e = events[r]
            events.append(e._replace(log_index=next_index[e.source_id]))
            next_index[e.source_id] += 1
    return events


@settings(max_examples=150, deadline=None)
@given(st.lists(_event, min_size=1, max_size=25), st.lists(st.integers(0, 24), max_size=3), st.randoms())
def test_flags_do_not_depend_on_arrival_order(
    raw: list[tuple], replays: list[int], rnd: random.Random
) -> None:
    events = _history(raw, replays)
    arrived = events[:]
    rnd.shuffle(arrived)
    expected = history_flags(events)
    assert history_flags(arrived) == expected
    # the speed layer, buffering in-order micro-batches, gives the batch layer's flags
    ordered = sorted(arrived, key=sort_key)
    state, got = EMPTY_STATE, []
    cut = sorted(rnd.sample(range(len(ordered) + 1), k=min(3, len(ordered) + 1)))
    for lo, hi in zip([0, *cut], [*cut, len(ordered)], strict=True):
        batch = ordered[lo:hi]
        rnd.shuffle(batch)
        state, applied = apply_sorted(state, batch)
        got += [(e.event_id, flags) for e, flags, _ in applied]
    assert got == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(_event, min_size=1, max_size=25), st.randoms())
def test_every_state_the_rules_return_is_whole_and_frozen(raw: list[tuple], rnd: random.Random) -> None:
    """The speed layer shares states between events and vehicles: each must have every field set and
    refuse to change (the rules build states through their slots, not ``__init__``)."""
    events = _history(raw, [])
    rnd.shuffle(events)  # late events too
    state = EMPTY_STATE
    for e in events:
        state = check_event(state, e)[0]
        copy = dataclasses.replace(state)  # reads every field: one left unset raises here
        assert copy == state and hash(copy) == hash(state)
        with pytest.raises(dataclasses.FrozenInstanceError):
            state.ref_km = 0  # type: ignore[misc]
