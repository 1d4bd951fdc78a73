"""Hand-built histories of the fraud variants the rules must hold on (issue 22).

A clone's variants are in tests/unit/test_rules_chains.py; here: clocking on a
car read every two months, a rollback with no earlier reading on record, and
rollbacks of every timing before a sale.
"""

from __future__ import annotations

import random

from pipelines.rules import EventFields, assess_vehicle

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


def test_clocking_at_60_percent_on_a_car_read_every_two_months() -> None:
    clocked = every_two_months(share_from=5, share=0.6)
    assessment = assess_vehicle(clocked)
    hits = [c for c in assessment.checked if "gradual_clocking" in c.flags]
    assert [c.event.event_id for c in hits] == ["e11"]  # the latest reading carries the verdict
    evidence = hits[0].evidence["gradual_clocking"]
    assert 0.5 < evidence["ratio"] < 0.65
    assert evidence["km_per_day_after"] < evidence["km_per_day_before"]
    assert assessment.score.label != "clean" and assessment.score.reasons == ("gradual_clocking",)


def test_the_same_car_driven_honestly_is_left_alone() -> None:
    for seed in range(5):
        assert flags(every_two_months(share_from=None, share=1.0, seed=seed)) == set()


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
