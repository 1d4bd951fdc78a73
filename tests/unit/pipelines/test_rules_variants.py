"""Hand-built histories of the fraud variants the rules must hold on (issue 22).

A clone's variants are in tests/unit/pipelines/test_rules_chains.py; here: clocking on a
car read every two months, clocking and honest slowdowns in a fleet with
seasons, a rollback with no earlier reading on record, and rollbacks of every
timing before a sale.
"""

from __future__ import annotations

import random
from dataclasses import replace

from pipelines.rules import DEFAULT_PARAMS, EventFields, assess_vehicle
from pipelines.rules.fraud import fleet_profile

DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01


def reading(
    i: int, day: float, km: float, source: str = "garage-ind-05", kind: str = "odometer_reading"
) -> EventFields:
    return EventFields(f"e{i}", kind, T0 + round(day * DAY), source, i, round(km))


def flags(events: list[EventFields]) -> set[str]:
    return {f for c in assess_vehicle(events).checked for f in c.flags}


def every_two_months(
    share_from: int | None, share: float, seed: int = 3, rate: float = 40.0
) -> list[EventFields]:
    """A car read by its garage every 61 days for two years; from reading ``share_from`` on it shows ``share``."""
    rng, km, out = random.Random(seed), 70_000.0, []
    for i in range(12):
        out.append(reading(i, 61 * i, km))
        driven = 61 * rate * rng.uniform(0.85, 1.15)
        km += driven * (share if share_from is not None and i >= share_from else 1.0)
    return out


def test_clocking_at_half_the_distance_on_a_car_read_every_two_months() -> None:
    # The case shows 60 %: that is the threshold now, within the honest year-to-year change of
    # one car in 200 (docs/fraud.md, "Two-year histories"); half the distance is well past it.
    clocked = every_two_months(share_from=5, share=0.5)
    assessment = assess_vehicle(clocked)
    hits = [c for c in assessment.checked if "gradual_clocking" in c.flags]
    assert [c.event.event_id for c in hits] == ["e11"]  # the latest reading carries the verdict
    evidence = hits[0].evidence["gradual_clocking"]
    assert 0.4 < evidence["ratio"] < DEFAULT_PARAMS.clocking_ratio
    assert evidence["km_per_day_after"] < evidence["km_per_day_before"]
    assert assessment.score.label != "clean" and assessment.score.reasons == ("gradual_clocking",)


def with_reference_typo(events: list[EventFields]) -> list[EventFields]:
    """``events`` with reading e3 typed 4,000 km too high, which e4 (a rollback, then) shows to be a typo."""
    return [e._replace(odometer_km=e.odometer_km + 4_000) if e.event_id == "e3" else e for e in events]


def test_clocking_is_measured_past_a_reference_typo_and_a_replay_of_the_reading_after_it() -> None:
    clocked = every_two_months(share_from=5, share=0.5)
    typo = with_reference_typo(clocked)
    replayed = [*typo, typo[4]._replace(log_index=1_004)]  # e4, that shows e3 was a typo, arrives twice
    expected = assess_vehicle(clocked).checked[-1].evidence["gradual_clocking"]
    for events in (typo, replayed):  # the replay raised StopIteration
        assessment = assess_vehicle(events)
        hits = [c for c in assessment.checked if "gradual_clocking" in c.flags]
        assert [c.event.event_id for c in hits] == ["e11"]
        assert hits[0].evidence["gradual_clocking"] == expected  # the typo left out of the rates
        e4 = [c for c in assessment.checked if c.event.event_id == "e4"]
        assert e4[0].evidence["odometer_rollback"]["standing"] == "reference_one_off"
    assert [c.flags for c in assess_vehicle(replayed).checked if c.event.event_id == "e4"][1] == (
        "duplicate_event",
    )


def test_the_same_car_driven_honestly_is_left_alone() -> None:
    for seed in range(5):
        assert flags(every_two_months(share_from=None, share=1.0, seed=seed)) == set()


def test_an_owner_who_drives_a_quarter_less_from_one_year_to_the_next_is_left_alone() -> None:
    """A new job, a second car: a lasting drop of honest usage is not clocking (the two-year demo flagged 4.8 %)."""
    for seed in range(5):
        rng, km, events = random.Random(seed), 70_000.0, []
        for i in range(24):  # read every month for two years, driving 25 % less from the second year
            events.append(reading(i, 30.5 * i, km))
            km += 30.5 * (40.0 if i < 12 else 30.0) * rng.uniform(0.85, 1.15)
        assert flags(events) == set(), seed


def test_clocking_that_starts_too_late_to_show_is_not_claimed() -> None:
    late = every_two_months(share_from=11, share=0.3)  # one clocked reading: no trend after the change
    assert "gradual_clocking" not in flags(late)


def test_a_rollback_with_no_earlier_reading_is_not_claimed() -> None:
    # wound back before the car reached the platform: every reading is already lowered, and rises
    events = [reading(i, 30 * i, 41_000 + 1_200 * i) for i in range(8)]
    events.append(reading(8, 235, 50_500, source="manual-portal", kind="ownership_change"))
    assessment = assess_vehicle(events)
    assert flags(events) == set()
    assert assessment.score.label == "clean"


def typo_then_rollback_before_sale() -> list[EventFields]:
    """An owner's weekly readings: one typed 850 km too high in week 10; wound back 9,000 km in week 50,
    sold in week 53; the lowered readings climb back past the typo's value by week 75."""
    out, km = [], 80_000.0
    for week in range(95):
        shown = km + (850 if week == 10 else 0) - (9_000 if week >= 50 else 0)
        if week == 11:
            out.append(reading(900, 7 * week - 1, km - 20, source="garage-net-04", kind="maintenance"))
        out.append(reading(week, 7 * week, shown))
        if week == 53:
            out.append(reading(901, 7 * week + 1, shown + 20, kind="ownership_change"))
        km += 150
    return out


def test_a_typo_at_the_top_of_the_history_does_not_turn_a_later_rollback_into_a_clone() -> None:
    # the typo ended the chain, the true readings went on beside it, and the wound-back ones climbed
    # to the typo's value: counted as a second odometer, the rollback was named a clone (two-year fleets)
    assessment = assess_vehicle(typo_then_rollback_before_sale())
    assert flags(typo_then_rollback_before_sale()) == {"odometer_rollback", "rollback_before_sale"}
    assert assessment.score.label == "fraudulent"
    standing = {
        c.event.event_id: c.evidence["odometer_rollback"]["standing"]
        for c in assessment.checked
        if "odometer_rollback" in c.flags
    }
    assert standing["e900"] == "reference_one_off"  # the garage's reading is below the typo, not wrong
    assert standing["e50"] == "confirmed"  # the wind-back


def rollback_then_a_digit_too_many() -> list[EventFields]:
    """Weekly owner's readings: wound back 5,000 km in week 20, sold in week 21; in week 45 one reading
    typed 20,000 km high, which the chain stopped by the wind-back could take at its generous allowance."""
    out, km = [], 50_000.0
    for week in range(60):
        shown = km - (5_000 if week >= 20 else 0) + (20_000 if week == 45 else 0)
        out.append(reading(week, 7 * week, shown, source="manual-portal"))
        if week == 21:
            out.append(
                reading(900, 7 * week + 1, shown + 10, source="manual-portal", kind="ownership_change")
            )
        km += 200
    return out


def test_a_typo_months_after_a_rollback_does_not_rejoin_the_odometer_before_it() -> None:
    # rejoining the stopped chain needed 3.8 times its pace: two switches, and the rollback was a "clone"
    found = flags(rollback_then_a_digit_too_many())
    assert "interleaved_odometers" not in found
    assert {"odometer_rollback", "rollback_before_sale", "implausible_rate"} <= found


def rollback_then_one_digit_mistyped() -> list[EventFields]:
    """Weekly owner's readings at 35 km/day: wound back 3,819 km in week 20, sold in week 22; in week 27
    the owner types one digit wrong (the thousands: 61,xxx as 65,xxx), which lands where the odometer
    before the wind-back would be by then."""
    out, km = [], 58_000.0
    for week in range(40):
        shown = round(km - (3_819 if week >= 20 else 0))
        if week == 27:
            typed = shown + 4_000
            assert sum(x != y for x, y in zip(str(shown), str(typed), strict=True)) == 1
            assert abs(typed - round(km)) < 300  # the odometer before the wind-back, at its pace
            shown = typed
        out.append(reading(week, 7 * week, shown, source="manual-portal"))
        if week == 22:
            out.append(
                reading(900, 7 * week + 1, shown + 10, source="manual-portal", kind="ownership_change")
            )
        km += 7 * 35
    return out


def test_a_digit_mistyped_after_a_rollback_is_a_typo_not_the_odometer_before_it() -> None:
    # the mistyped reading fitted the chain the wind-back had stopped at its own pace: two switches, and
    # the rollback was named a clone; one digit changed, it is where the car's own chain predicts
    found = flags(rollback_then_one_digit_mistyped())
    assert "interleaved_odometers" not in found
    assert {"odometer_rollback", "rollback_before_sale"} <= found


def one_reading_then_a_drop(second_km: int, drop_to: int | None) -> list[EventFields]:
    """A young car its garage reads every two months: 7,631 km on day 0, ``second_km`` on day 63; on day
    107 it reads ``drop_to`` (or its honest 8,714 + 44 days at 17 km/day), sold on day 109, then driven
    at 25 km/day, read every 45 days."""
    out = [reading(0, 0, 7_631), reading(1, 63, second_km)]
    km = float(drop_to if drop_to is not None else 8_714 + 44 * 17)
    out.append(reading(2, 107, km))
    out.append(reading(3, 109, km + 40, source="manual-portal", kind="ownership_change"))
    for i, day in enumerate(range(124, 300, 45), start=4):
        out.append(reading(i, day, km + 25 * (day - 107)))
    return out


def test_a_drop_after_a_single_earlier_reading_is_judged_on_the_cars_later_pace() -> None:
    # 7,631 -> 8,714 -> 7,590: the drop agrees with the first reading, and with no pace before the
    # 8,714 that was taken for the typo; the car's pace after (25 km/day) says 8,714 was on its line
    found = flags(one_reading_then_a_drop(8_714, 7_590))
    assert {"odometer_rollback", "rollback_before_sale"} <= found


def test_a_high_typo_after_a_single_earlier_reading_is_still_the_typo() -> None:
    events = one_reading_then_a_drop(18_714, None)  # 8,714 typed with a 1 too many
    assessment = assess_vehicle(events)
    assert "rollback_before_sale" not in {f for c in assessment.checked for f in c.flags}
    assert assessment.score.label == "clean"


#: (day, km, source, event type): a garage's monthly readings of a car wound back 892 km on day 450 and
#: sold two weeks later; the new owner drives more at first, then less (a simulated fleet's car, seed 8).
DROVE_PAST_A_SMALL_ROLLBACK = [
    (0.0, 8269), (26.3, 8850), (51.1, 9463), (73.4, 9933), (97.3, 10493), (135.0, 11425), (164.0, 12270),
    (191.2, 13056), (220.4, 13696, "garage-ind-21"), (225.1, 13770), (258.3, 14672), (284.2, 15347),
    (314.1, 16054), (348.4, 16665), (372.3, 17300), (411.3, 18670), (450.3, 17778),
    (465.4, 18258, "manual-portal", "ownership_change"), (477.1, 18645), (504.1, 19427), (534.2, 20647),
    (564.1, 21914), (564.1, 21914, "garage-net-03"), (598.1, 23033), (627.0, 23879), (655.4, 24757),
    (688.2, 25768), (710.3, 26356),
]  # fmt: skip


def drove_past_a_small_rollback() -> list[EventFields]:
    out = []
    for i, (day, km, *rest) in enumerate(DROVE_PAST_A_SMALL_ROLLBACK):
        source = str(rest[0]) if rest else "garage-net-02"
        kind = str(rest[1]) if len(rest) > 1 else "maintenance"
        out.append(reading(i, day, km, source=source, kind=kind))
    return out


def test_a_car_driven_past_a_small_rollback_is_not_the_odometer_before_it_resuming() -> None:
    # 205 days after the wind-back, a reading fitted the old chain's slow pace a little better than the
    # car's own recent one: it "resumed", two odometers interleaved, and the rollback was named a clone
    found = flags(drove_past_a_small_rollback())
    assert "interleaved_odometers" not in found
    assert {"odometer_rollback", "rollback_before_sale"} <= found


def connected_car_rolled_back_then_a_late_hand_entry(entry_below_km: int = 300) -> list[EventFields]:
    """A connected car read daily at 45 km/day, wound back 4,275 km on day 60 and sold on day 80; on day
    280 its new owner types in a reading ``entry_below_km`` below the telematics (a reading from days ago)."""
    events, km = [], 49_000.0
    for day in range(0, 300):
        shown = km - (4_275 if day >= 60 else 0)
        events.append(reading(day, day + 0.5, shown, source="cc-cassini"))
        if day == 80:
            events.append(
                reading(1_000, day + 0.7, shown + 20, source="manual-portal", kind="ownership_change")
            )
        if day == 280:
            events.append(reading(1_001, day + 0.9, shown - entry_below_km, source="manual-portal"))
        km += 45
    return events


def test_a_late_hand_entry_long_after_a_rollback_the_car_drove_past_does_not_resume_the_old_odometer() -> (
    None
):
    # the entry is below the car's telematics, so only the chain the wind-back stopped could take it;
    # that chain has been silent for seven months and the car's own pace predicts the entry far better
    found = flags(connected_car_rolled_back_then_a_late_hand_entry())
    assert "interleaved_odometers" not in found
    assert {"odometer_rollback", "rollback_before_sale"} <= found


def sold_after_rollback(days_before_sale: int, drop: int) -> list[EventFields]:
    events, km = [], 90_000.0
    sale_day = 300
    for i, day in enumerate(range(0, sale_day, 20)):
        shown = km - (drop if day >= sale_day - days_before_sale else 0)
        events.append(reading(i, day, shown))
        km += 20 * 45
    events.append(reading(99, sale_day, km - drop, source="manual-portal", kind="ownership_change"))
    return events


def test_rollbacks_days_weeks_and_months_before_a_sale() -> None:
    for days in (10, 60, 200):
        for drop in (3_000, 40_000):
            assert "rollback_before_sale" in flags(sold_after_rollback(days, drop)), (days, drop)


#: A fleet that drives 40 % more from March to August and 40 % less the rest of the year.
SEASONAL = tuple(1.4 if 2 <= m <= 7 else 0.6 for m in range(12))


def monthly_in_a_seasonal_fleet(share_from_month: int | None, share: float) -> list[EventFields]:
    """A car read at the start of every month of 2024 that drives as the fleet does (``SEASONAL``)."""
    out, km = [], 30_000.0
    for month in range(12):
        out.append(reading(month, 30.44 * month + 1, km))
        driven = 30.44 * 40 * SEASONAL[month]
        km += driven * (share if share_from_month is not None and month >= share_from_month else 1.0)
    return out


def test_a_slowdown_the_whole_fleet_shares_is_no_clocking() -> None:
    honest = monthly_in_a_seasonal_fleet(None, 1.0)
    seasonal = replace(DEFAULT_PARAMS, fleet_profile=SEASONAL)
    assert "gradual_clocking" not in {
        f for c in assess_vehicle(honest, params=seasonal).checked for f in c.flags
    }
    # the same car judged without the fleet's seasons: autumn looks like clocking
    assert "gradual_clocking" in flags(honest)


def test_clocking_in_a_seasonal_fleet_is_measured_against_the_fleet() -> None:
    clocked = monthly_in_a_seasonal_fleet(7, 0.5)  # shows half from August on
    seasonal = replace(DEFAULT_PARAMS, fleet_profile=SEASONAL)
    hits = [c for c in assess_vehicle(clocked, params=seasonal).checked if "gradual_clocking" in c.flags]
    assert [c.event.event_id for c in hits] == ["e11"]
    evidence = hits[0].evidence["gradual_clocking"]
    assert evidence["fleet_ratio"] < 0.8  # the fleet itself slowed down over the same months ...
    assert 0.4 < evidence["ratio"] < 0.6  # ... and the car by half on top of that
    assert evidence["z"] >= DEFAULT_PARAMS.clocking_min_z


def test_the_fleet_profile_is_measured_from_the_fleets_readings() -> None:
    # daily readings of ten cars of different rates through 2024, all following SEASONAL
    fleet = []
    for car in range(10):
        rate, km, history = 15.0 + 10 * car, 10_000.0, []
        for day in range(366):
            history.append((T0 + day * DAY + 3_600_000 * 12, round(km)))
            km += rate * SEASONAL[min(int(day / 30.5), 11)]
        fleet.append(history)
    profile = fleet_profile([*fleet, [(T0, 5_000), (T0 + 20 * DAY, 6_000)]])  # a car seen 20 days: ignored
    assert len(profile) == 12 and abs(sum(profile) / 12 - 1) < 0.01
    assert all(abs(p - s) < 0.1 for p, s in zip(profile, SEASONAL, strict=True))
    assert fleet_profile([]) == (1.0,) * 12  # no fleet to measure: every day counts the same


def test_a_small_wind_back_at_the_sale_on_a_car_read_a_few_times_a_year() -> None:
    # 45 km/day; wound back ~4,000 km just before the sale; the next reading, two months on, is back
    # near the old figure (within the reading noise of it) but far below where the car's rate puts it
    events = [reading(0, 0, 64_700), reading(1, 24, 65_770), reading(2, 102, 69_300)]
    events.append(reading(3, 116, 65_930, source="garage-net-03", kind="ownership_change"))
    events += [reading(4, 177, 69_255), reading(5, 196, 70_260), reading(6, 279, 73_860)]
    assessment = assess_vehicle(events)
    sale = next(c for c in assessment.checked if c.event.event_id == "e3")
    assert sale.evidence["odometer_rollback"]["standing"] == "confirmed"
    assert "rollback_before_sale" in sale.flags
    assert assessment.score.label != "clean"


def test_a_wind_back_first_seen_after_the_sale_on_a_car_read_every_quarter() -> None:
    events = [reading(i, 91 * i, 50_000 + 91 * 40 * i) for i in range(3)]  # days 0, 91, 182
    events.append(
        reading(3, 200, 0, source="manual-portal", kind="ownership_change")._replace(odometer_km=None)
    )
    events += [reading(4 + i, 273 + 91 * i, 50_000 + 40 * (273 + 91 * i) - 15_000) for i in range(3)]
    hits = [c for c in assess_vehicle(events).checked if "rollback_before_sale" in c.flags]
    assert [c.event.event_id for c in hits] == ["e3"]
    detail = hits[0].evidence["rollback_before_sale"]
    assert detail["across_sale"] is True and detail["drop_km"] > 10_000  # 15,000 less the 91 days driven
