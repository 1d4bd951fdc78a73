"""The compiled rules (pipelines.rules.kernels) against the Python rules, their oracle.

On random histories (hypothesis: readings that go on, wind back, jump, have
typos, come from a second odometer elsewhere, sales, wrecks, replays, unverified
and unlocated events) and on a simulated fleet with every fraud kind, the
kernels and :func:`pipelines.rules.fraud.assess_vehicle` must give the same
flags on every event, the same evidence and the same score.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipelines.rules import DEFAULT_PARAMS, EventFields, FraudParams, assess_vehicle, sort_key
from pipelines.rules.kernels import assess_columns, columns

DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01
PLACES = [(48.8566, 2.3522), (48.9, 2.4), (45.764, 4.8357), (52.52, 13.405), (43.2965, 5.3698)]
TYPES = ["odometer_reading", "odometer_reading", "odometer_reading", "service", "ownership_change"]


def agree(events: list[EventFields], params: FraudParams = DEFAULT_PARAMS,
          stream: dict[str, list[str]] | None = None) -> None:  # fmt: skip
    ordered = sorted(events, key=sort_key)
    oracle = assess_vehicle(ordered, stream, params)
    by_index = {i: stream[e.event_id] for i, e in enumerate(ordered) if stream and e.event_id in stream}
    got = assess_columns(columns(ordered), by_index, params)
    assert [c.flags for c in oracle.checked] == got.flags
    assert {i: c.evidence for i, c in enumerate(oracle.checked) if c.flags} == got.evidence
    assert oracle.score == got.score


@st.composite
def histories(draw: st.DrawFn) -> list[EventFields]:
    n = draw(st.integers(0, 45))
    t, km = T0, draw(st.integers(0, 200_000))
    twin_km = km + draw(st.integers(-60_000, 60_000))
    events: list[EventFields] = []
    for i in range(n):
        t += draw(st.sampled_from([0, 60_000, 3_600_000, DAY // 2, DAY, 3 * DAY, 14 * DAY, 45 * DAY]))
        km += draw(st.integers(0, 3)) * 400
        twin_km += draw(st.integers(0, 2)) * 300
        what = draw(st.sampled_from(["go", "go", "go", "twin", "typo", "back", "jump", "none"]))
        odo: int | None = {"twin": twin_km, "typo": km + draw(st.integers(-5_000, 5_000)), "none": None}.get(
            what, km
        )
        if what == "back":
            km = max(0, km - draw(st.integers(40, 30_000)))
            odo = km
        elif what == "jump":
            km += draw(st.integers(1_000, 40_000))
            odo = km
        place = draw(st.one_of(st.none(), st.sampled_from(PLACES)))
        kind = draw(st.sampled_from([*TYPES, "wreck_declaration"] if i > n // 2 else TYPES))
        events.append(
            EventFields(
                f"e{i}",
                kind,
                t,
                draw(st.sampled_from(["garage-a", "tel-b", "man-c"])),
                i,
                odo,
                None if place is None else place[0],
                None if place is None else place[1],
                draw(st.booleans() | st.just(True)),
                draw(st.sampled_from([None, None, 1, 3, 4])),
            )
        )
    for j in draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=3)) if n else ():
        events.append(events[j]._replace(log_index=1_000 + j))  # a replay, appended after the original
    return events


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    histories(), st.sampled_from([(1.0,) * 12, (0.6, 0.7, 0.9, 1.1, 1.2, 1.3, 1.3, 1.2, 1.1, 0.9, 0.8, 0.7)])
)
def test_kernels_agree_with_the_python_rules_on_random_histories(
    events: list[EventFields], profile: tuple[float, ...]
) -> None:
    agree(events, dataclasses.replace(DEFAULT_PARAMS, fleet_profile=profile, clocking_min_span_days=20))


@given(histories(), st.lists(st.integers(0, 40), max_size=3))
@settings(max_examples=30, deadline=None)
def test_stream_flags_merge_as_in_the_python_rules(events: list[EventFields], picks: list[int]) -> None:
    stream = {events[i].event_id: ["duplicate_event"] for i in picks if i < len(events)}
    agree(events, stream=stream)


def test_kernels_agree_on_a_replayed_reading_that_shows_a_reference_typo() -> None:
    # 52,400 is a typo that 43,600 shows; 43,600 is replayed (the Python rules raised StopIteration on it)
    readings = [(0, 40_000), (30, 41_200), (60, 52_400), (90, 43_600), (120, 44_800)]
    events = [
        EventFields(f"e{i}", "odometer_reading", T0 + d * DAY, "garage-a", i, km)
        for i, (d, km) in enumerate(readings)
    ]
    agree([*events, events[3]._replace(log_index=1_003)])
    # a car read every two months for two years, clocked from its sixth reading, with the same typo and replay
    km, clocked = 70_000, []
    for i in range(12):
        shown = km + (4_000 if i == 3 else 0)
        clocked.append(EventFields(f"c{i}", "odometer_reading", T0 + 61 * i * DAY, "garage-a", i, shown))
        km += 2_400 if i < 5 else 1_200
    agree([*clocked, clocked[4]._replace(log_index=1_004)])
    flagged = [c.flags for c in assess_vehicle(sorted(clocked, key=sort_key)).checked]
    assert ("odometer_rollback",) in flagged and ("gradual_clocking",) in flagged


@pytest.fixture(scope="module")
def fleet() -> list[list[EventFields]]:
    from pipelines.rules import fields_from
    from pipelines.simulator import SimulationConfig, vehicle

    config = SimulationConfig(vehicles=60, days=365, seed=3, fraud_rate=0.5)
    out = []
    for i in range(config.vehicles):
        positions: Counter[str] = Counter()
        history = []
        for e in vehicle(config, i)[0]:
            history.append(fields_from(e, log_index=positions[str(e["source_id"])]))
            positions[str(e["source_id"])] += 1
        out.append(history)
    return out


def test_kernels_agree_with_the_python_rules_on_a_simulated_fleet(fleet: list[list[EventFields]]) -> None:
    flagged = Counter()
    for history in fleet:
        agree(history)
        for c in assess_vehicle(sorted(history, key=sort_key)).checked:
            flagged.update(c.flags)
    # the fleet exercises the history rules, not only the per-event ones
    assert (
        flagged["rollback_before_sale"] and flagged["gradual_clocking"] and flagged["interleaved_odometers"]
    )


def test_an_empty_history_scores_clean() -> None:
    got = assess_columns(columns([]))
    assert got.flags == [] and got.score.label == "clean"


def test_kernels_agree_on_a_typo_set_apart_from_the_end_of_a_chain() -> None:
    from tests.unit.pipelines.test_rules_variants import typo_then_rollback_before_sale

    agree(typo_then_rollback_before_sale())


def test_kernels_agree_when_a_typo_could_rejoin_a_stopped_chain() -> None:
    from tests.unit.pipelines.test_rules_variants import rollback_then_a_digit_too_many

    agree(rollback_then_a_digit_too_many())


def test_kernels_agree_when_the_car_drove_past_a_rollback() -> None:
    from tests.unit.pipelines.test_rules_variants import drove_past_a_small_rollback

    agree(drove_past_a_small_rollback())


def test_kernels_agree_on_a_late_hand_entry_long_after_a_rollback() -> None:
    from tests.unit.pipelines.test_rules_variants import connected_car_rolled_back_then_a_late_hand_entry

    for below in (0, 300, 3_000, 4_500):
        agree(connected_car_rolled_back_then_a_late_hand_entry(below))


def test_kernels_agree_on_a_digit_mistyped_after_a_rollback() -> None:
    from tests.unit.pipelines.test_rules_variants import rollback_then_one_digit_mistyped

    agree(rollback_then_one_digit_mistyped())


def test_kernels_agree_on_a_drop_after_a_single_earlier_reading() -> None:
    from tests.unit.pipelines.test_rules_variants import one_reading_then_a_drop

    for second, drop_to in ((8_714, 7_590), (18_714, None), (8_714, 7_700), (8_714, None)):
        agree(one_reading_then_a_drop(second, drop_to))


def test_kernels_agree_on_travel_between_records_and_live_readings() -> None:
    from tests.unit.pipelines.test_rules_fraud import LYON, PARIS, WARSAW, ev

    kinds = ("odometer_reading", "maintenance", "inspection", "accident_declaration")
    for first in kinds:
        for second in kinds:
            for where in (LYON, WARSAW):
                for minutes in (20, 60, 300):
                    a = ev(0, 0, kind=first, lat=PARIS[0], lon=PARIS[1])
                    b = ev(1, minutes / 1_440, kind=second, lat=where[0], lon=where[1])
                    agree([a, b])


def test_kernels_agree_on_twins_read_in_turn() -> None:
    from tests.unit.pipelines.test_rules_chains import twin_read_in_turn

    for offset in (1_000, -800, 10_000, 2_500):
        for every in (7, 30):
            agree(twin_read_in_turn(offset, 3, every, 40.0, 70))


@st.composite
def fleets(draw: st.DrawFn) -> list[list[tuple[int, int]]]:
    """Cars' (time, km) readings: days to weeks apart (some too close or too far to count), mostly
    climbing, some winding back, over a year or more so that most cars count."""
    cars = []
    for _ in range(draw(st.integers(0, 6))):
        t, km, readings = T0 + draw(st.integers(0, 365)) * DAY, draw(st.integers(0, 90_000)), []
        for _ in range(draw(st.integers(0, 70))):
            t += draw(st.sampled_from([DAY // 3, DAY, 5 * DAY, 9 * DAY, 15 * DAY, 20 * DAY])) + draw(
                st.integers(0, DAY)
            )
            km += draw(st.sampled_from([0, 120, 700, 2_500, -3_000, 40_000]))
            readings.append((t, km))
        readings += draw(st.lists(st.sampled_from(readings), max_size=2)) if readings else []  # same time
        cars.append(readings)
    return cars


WEEKLY = [[(T0 + 7 * i * DAY + i * 3_600_000, 5_000 + 350 * i + (i % 5) * 40) for i in range(60)]]


@given(fleets())
@example(WEEKLY)
@settings(max_examples=150, deadline=None)
def test_the_compiled_fleet_profile_sums_are_the_python_rules_to_the_last_bit(
    cars: list[list[tuple[int, int]]],
) -> None:
    import numpy as np

    from pipelines.rules.history import profile_sums
    from pipelines.rules.kernels import profile_columns

    km, days = [0.0] * 12, [0.0] * 12
    for readings in cars:  # the oracle: car by car, in the cars' order
        k, d = profile_sums(readings)
        km = [x + y for x, y in zip(km, k, strict=True)]
        days = [x + y for x, y in zip(days, d, strict=True)]
    ordered = [sorted(r) for r in cars]
    starts = np.cumsum([0, *(len(r) for r in ordered)])
    flat = [p for r in ordered for p in r]
    got = profile_columns(
        np.array([t for t, _ in flat], np.int64), np.array([k for _, k in flat], np.int64), starts
    )
    assert got == (km, days)
    if cars == WEEKLY:
        assert sum(days) > 300  # the example counts: the sums are not all zero
