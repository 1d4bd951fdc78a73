"""The passport's data: what the page shows for a hand-made history, from memory and from DuckDB."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipelines import canonical
from serving.passport.assemble import build_passport, fraud_of
from serving.passport.chart import mileage_svg
from serving.passport.errors import ServingViewMissingError, VehicleNotFoundError
from serving.passport.source import DuckDBPassportSource, InMemoryPassportSource
from tests.fixtures.passport_history import OTHER, READINGS, ROLLBACK_MONTH, VEHICLE, History, build_history


@pytest.fixture(scope="module")
def history() -> History:
    return build_history()


@pytest.fixture(scope="module")
def passport(history: History) -> dict[str, Any]:
    return build_passport(InMemoryPassportSource(history.rows, history.fraud), VEHICLE)


def test_curve_has_every_odometer_value_oldest_first(passport: dict[str, Any], history: History) -> None:
    readings = passport["readings"]
    expected = sorted(history.readings(), key=lambda r: r["event_time"])
    assert [r["event_id"] for r in readings] == [r["event_id"] for r in expected]
    assert [r["odometer_km"] for r in readings] == [r["odometer_km"] for r in expected]
    # the 12 readings of the car plus the service's and the inspection's odometer values
    assert len(readings) == len(READINGS) + 2
    assert {r["event_type"] for r in readings} == {"odometer_reading", "maintenance", "inspection"}
    unverified = [r for r in readings if r["verification"] == "unverified"]
    assert [r["source_id"] for r in unverified] == ["manual-portal", "manual-portal"]
    rollback = next(r for r in readings if r["odometer_km"] == READINGS[ROLLBACK_MONTH][1])
    assert rollback["flags"] == ["odometer_rollback"] and rollback["quality"] < 0.5
    assert passport["summary"]["last_odometer_km"] == READINGS[-1][1]
    assert passport["summary"]["verified"] == len(history.of_vehicle()) - 2


def test_timeline_lists_each_event_once_and_only_this_vehicles(history: History) -> None:
    rows = [*history.rows, dict(history.row("maintenance"))]  # a replayed copy across layers
    passport = build_passport(InMemoryPassportSource(rows, history.fraud), VEHICLE)
    ids = [e["event_id"] for e in passport["timeline"]]
    assert len(ids) == len(set(ids)) == len(history.of_vehicle())
    assert all(r["vehicle"] == VEHICLE for r in history.rows if r["event_id"] in ids)
    times = [e["event_time"] for e in passport["timeline"]]
    assert times == sorted(times)
    service = next(e for e in passport["timeline"] if e["event_type"] == "maintenance")
    assert service["summary"] == "service type: periodic service; items: oil, filters"
    inspection = next(e for e in passport["timeline"] if e["event_type"] == "inspection")
    assert "pass with defects" in inspection["summary"] and "2027-07-31" in inspection["summary"]


def test_no_location_money_claim_or_owner_leaves_the_page_data(passport: dict[str, Any]) -> None:
    text = json.dumps(passport)
    for private in (
        "CLM-77-1093",
        "INV-2025-0042",
        "cost_cents",
        "damage_cents",
        "claim_ref",
        "location",
        "48.137",
    ):
        assert private not in text


def test_accidents_and_wreck_status(passport: dict[str, Any], history: History) -> None:
    accident = history.row("accident_declaration")
    assert passport["accidents"] == [
        {
            "event_id": accident["event_id"],
            "event_time": passport["accidents"][0]["event_time"],
            "source_id": "ins-mutua",
            "severity": "moderate",
            "description": "rear-end collision at low speed",
        }
    ]
    assert passport["wreck"] == {"wrecked": False}

    wreck = dict(accident, event_id="01990000-0000-7000-8000-00000000beef", event_type="wreck_declaration")
    wreck["event_time"] = accident["event_time"] + timedelta(days=2)
    wreck["payload"] = canonical.canonical_bytes(
        {"claim_ref": "CLM-77-1093", "reason": "collision", "total_loss": True}
    ).decode()
    after = sum(1 for r in history.of_vehicle() if r["event_time"] > wreck["event_time"])
    wrecked = build_passport(InMemoryPassportSource([*history.rows, wreck]), VEHICLE)
    assert wrecked["wreck"]["wrecked"] is True
    assert wrecked["wreck"]["reason"] == "collision"
    assert wrecked["wreck"]["events_after"] == after > 0
    assert wrecked["fraud"] is None


def test_fraud_reasons_keep_rule_and_evidence_whatever_the_shape(
    passport: dict[str, Any], history: History
) -> None:
    evidence = history.fraud[0]["reasons"][0]["evidence"]
    assert passport["fraud"] == {
        "score": 0.74,
        "label": "suspicious",
        "reasons": [{"rule": "odometer_rollback", "evidence": evidence}],
        "explanation": history.fraud[0]["explanation"],
    }
    as_text = fraud_of(
        {
            "score": 0.9,
            "label": "fraudulent",
            "reasons": json.dumps([{"rule": "activity_after_wreck", "evidence": ["e1"]}]),
        }
    )
    assert as_text is not None and as_text["reasons"] == [
        {"rule": "activity_after_wreck", "evidence": ["e1"]}
    ]
    as_pairs = fraud_of(
        {"score": 0.5, "label": "suspicious", "reasons": [("implausible_rate", ["e2", "e3"])]}
    )
    assert as_pairs is not None and as_pairs["reasons"] == [
        {"rule": "implausible_rate", "evidence": ["e2", "e3"]}
    ]
    assert fraud_of(None) is None


def test_unknown_vehicle_is_not_found(history: History) -> None:
    with pytest.raises(VehicleNotFoundError, match=r"no events for vehicle v-0{32}"):
        build_passport(InMemoryPassportSource(history.rows), "v-" + "0" * 32)


def test_duckdb_source_gives_the_same_passport(
    history: History, passport: dict[str, Any], tmp_path: Path
) -> None:
    con = duckdb.connect(str(history.write_duckdb(tmp_path / "serving.duckdb")), read_only=True)
    try:
        source = DuckDBPassportSource.from_connection(con)
        assert build_passport(source, VEHICLE) == passport
        other = build_passport(source, OTHER)
        assert other["fraud"] is not None and other["fraud"]["label"] == "clean"
        assert {e["event_id"] for e in other["timeline"]}.isdisjoint(
            {e["event_id"] for e in passport["timeline"]}
        )
        proof = source.proof(history.row("inspection")["event_id"])
        assert proof is not None and proof["leaf_hash"] == history.row("inspection")["leaf_hash"]
        assert source.proof("01990000-0000-7000-8000-000000000000") is None
    finally:
        con.close()


def test_duckdb_source_before_the_first_batch_run_has_no_score(history: History) -> None:
    import pyarrow as pa

    from pipelines.dataset import MASTER_SCHEMA

    con = duckdb.connect()
    table = pa.Table.from_pylist(history.rows, schema=MASTER_SCHEMA)
    con.register("rows_arrow", table)
    con.execute("CREATE TABLE vehicle_history AS SELECT * FROM rows_arrow")  # no fraud_scores view yet
    passport = build_passport(DuckDBPassportSource.from_connection(con), VEHICLE)
    assert passport["fraud"] is None and len(passport["readings"]) == len(history.readings())
    con.execute("DROP TABLE vehicle_history")
    with pytest.raises(ServingViewMissingError, match="vehicle_history"):
        build_passport(DuckDBPassportSource.from_connection(con), VEHICLE)
    con.close()


def test_chart_draws_one_point_per_reading_and_marks_unverified_and_falls(passport: dict[str, Any]) -> None:
    svg = mileage_svg(
        passport["readings"], [{"event_time": passport["accidents"][0]["event_time"], "kind": "accident"}]
    )
    points = re.findall(r'<circle class="pt (\w+)"[^>]*data-km="(\d+)"', svg)
    assert [int(km) for _, km in points] == [r["odometer_km"] for r in passport["readings"]]
    assert [s for s, _ in points].count("unverified") == 2
    assert svg.count('class="seg down"') == 1
    assert svg.count('class="seg"') == len(points) - 2
    assert svg.count('class="marker accident"') == 1
    assert "No odometer readings" in mileage_svg([])
