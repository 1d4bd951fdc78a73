"""The quality index and its components."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.dataset import FRAUD_FLAGS, MASTER_COLUMNS
from pipelines.errors import PccError, PccValueError
from pipelines.rules import completeness, consistency_from_flags, optional_fields, quality_index
from pipelines.rules.quality import timeliness

unit = st.floats(0.0, 1.0, allow_nan=False)


def test_components_are_the_dataset_columns() -> None:
    _, components = quality_index(1, 1.0, True, 1.0, 0.0, 1.0)
    assert set(components) == {c for c in MASTER_COLUMNS if c.startswith("q_")}


def test_a_perfect_event_scores_one_and_an_unproven_one_loses_the_proof_weight() -> None:
    best, components = quality_index(1, 1.0, True, 1.0, 2.0, 1.0)
    assert best == pytest.approx(1.0) and set(components.values()) == {1.0}
    unproven, components = quality_index(1, 1.0, False, 1.0, 2.0, 1.0)
    assert components["q_proof"] == 0.0
    assert unproven == pytest.approx(0.75)


def test_better_tiers_score_higher() -> None:
    scores = [quality_index(tier, 0.5, True, 1.0, 0.0, 0.5)[0] for tier in (1, 2, 3, 4)]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4


def test_timeliness_halves_every_three_days_after_five_minutes() -> None:
    assert timeliness(-10) == timeliness(0) == timeliness(300) == 1.0
    assert timeliness(300 + 3 * 86_400) == pytest.approx(0.5)
    assert timeliness(300 + 6 * 86_400) == pytest.approx(0.25)


def test_optional_fields_follow_the_contract_table() -> None:
    assert optional_fields("odometer_reading") == ("location", "fuel_level_pct", "firmware")
    assert set(optional_fields("maintenance")) == {"items", "cost_cents", "invoice_ref", "location", "notes"}
    assert set(optional_fields("ownership_change")) == {"previous_owner", "sale_price_cents", "country"}


def test_completeness_is_the_share_of_optional_fields_present() -> None:
    assert (
        completeness("maintenance", {"odometer_km": 1, "service_type": "brakes", "in_network": True}) == 0.0
    )
    assert completeness("maintenance", {"items": ["pads"], "cost_cents": 100}) == pytest.approx(2 / 5)
    full = {"location": {"lat": 1, "lon": 2}, "fuel_level_pct": 50, "firmware": "1.0"}
    assert completeness("odometer_reading", {"odometer_km": 1, **full}) == 1.0
    with pytest.raises(PccError, match="no schema"):
        completeness("teleportation", {})


def test_consistency_from_flags() -> None:
    assert consistency_from_flags(()) == 1.0
    assert consistency_from_flags(["duplicate_event", "odometer_rollback"]) == pytest.approx(0.2)
    assert all(0.0 <= consistency_from_flags([f]) < 1.0 for f in FRAUD_FLAGS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((5, 0.5, True, 1.0, 0.0, 1.0), "source_tier must be one of 1, 2, 3, 4, got 5"),
        ((1, 1.5, True, 1.0, 0.0, 1.0), "reputation must be a number in \\[0, 1\\], got 1.5"),
        ((1, 0.5, True, -0.1, 0.0, 1.0), "consistency must be"),
        ((1, 0.5, True, 1.0, float("nan"), 1.0), "ingestion_delay_s must be a number"),
        ((1, 0.5, True, 1.0, 0.0, 2), "completeness must be"),
    ],
)
def test_bad_inputs_name_the_parameter(args: tuple, message: str) -> None:
    with pytest.raises(PccValueError, match=message):
        quality_index(*args)


@given(st.sampled_from([1, 2, 3, 4]), unit, st.booleans(), unit, st.floats(-1e3, 1e9), unit)
def test_index_and_components_stay_in_unit_interval(
    tier: int, rep: float, proof: bool, cons: float, delay: float, comp: float
) -> None:
    index, components = quality_index(tier, rep, proof, cons, delay, comp)
    assert 0.0 <= index <= 1.0
    assert all(0.0 <= v <= 1.0 for v in components.values())
