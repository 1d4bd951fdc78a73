"""Do the shared rules find the frauds the simulator injects, counted as the batch evaluation counts?

``pipelines.rules.evaluation`` assesses each simulated vehicle the way the
batch layer does after the speed layer stored it (replays stored once, their
``duplicate_event`` passed as a stream flag).  Measured with 200 vehicles x 540
days, fraud rate 0.3, seeds 21-23 together: F1 1.0 for rollbacks before a sale,
0.97 for gradual clocking, recall 1.0 for wrecks, clones and replays; 2 of 411
clean cars scored above ``clean``.  The bounds leave room for seed-to-seed spread,
not for a regression.
"""

from __future__ import annotations

import pytest

from pipelines.rules.evaluation import KIND_FLAGS, FleetQuality, evaluate_fleet, main
from pipelines.simulator import FRAUD_KINDS, SimulationConfig


@pytest.fixture(scope="module")
def quality() -> FleetQuality:
    total = FleetQuality()
    for seed in (21, 22, 23):
        total = total.merge(
            evaluate_fleet(SimulationConfig(vehicles=200, days=540, seed=seed, fraud_rate=0.3))
        )
    return total


def test_every_kind_is_evaluated_with_enough_cases(quality: FleetQuality) -> None:
    assert set(KIND_FLAGS) == set(FRAUD_KINDS)
    assert all(k.support >= 15 for k in quality.kinds), quality.report()
    assert len(quality.clean) > 300


def test_rules_meet_the_fraud_quality_targets(quality: FleetQuality) -> None:
    kinds = {k.kind: k for k in quality.kinds}
    report = quality.report()
    assert kinds["rollback_before_sale"].f1 >= 0.95, report
    assert kinds["gradual_clocking"].f1 >= 0.85, report
    assert kinds["wreck_back_on_road"].recall == 1.0, report
    assert kinds["cloned_identity"].recall >= 0.9 and kinds["cloned_identity"].precision >= 0.9, report
    assert kinds["replay"].recall >= 0.95, report


def test_typos_do_not_make_honest_cars_suspicious(quality: FleetQuality) -> None:
    assert quality.false_positive_rate <= 0.01, [
        (o.index, o.label, o.reasons) for o in quality.clean_false_positives
    ]


def test_the_harness_prints_per_kind_figures(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--vehicles", "60", "--days", "200", "--seeds", "3", "4", "--fraud-rate", "0.5"])
    out = capsys.readouterr().out
    assert out.startswith("seed 3: ") and "\nall seeds: " in out
    for kind in FRAUD_KINDS:
        assert out.count(kind) == 3  # each seed, then all seeds
    assert "clean cars labelled not clean" in out
