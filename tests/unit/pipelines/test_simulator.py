"""The fleet simulator: files, determinism, labels, realism, the CLI."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli.main import main
from pipelines.errors import PccValueError
from pipelines.events import event_id_ms, parse_time_ms, validate_input
from pipelines.simulator import FRAUD_KINDS, LABEL_KINDS, SOURCES, SimulationConfig, simulate, write_fleet
from pipelines.simulator.variants import VARIANT_FAMILIES

SMALL = SimulationConfig(vehicles=60, days=400, seed=11, fraud_rate=0.5)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet")
    write_fleet(SMALL, out)
    return out


def read_events(out: Path) -> dict[str, list[dict]]:
    return {p.stem: [json.loads(line) for line in p.open()] for p in sorted((out / "events").glob("*.jsonl"))}


def read_labels(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "labels.jsonl").open()]


def tree_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(fleet: Path, tmp_path: Path) -> None:
    write_fleet(SMALL, tmp_path / "again")
    assert tree_bytes(tmp_path / "again") == tree_bytes(fleet)
    other = SimulationConfig(vehicles=60, days=400, seed=12, fraud_rate=0.5)
    write_fleet(other, tmp_path / "other")
    assert (
        tree_bytes(tmp_path / "other")["events/cc-aurora.jsonl"]
        != tree_bytes(fleet)["events/cc-aurora.jsonl"]
    )


def test_one_file_per_source_and_every_event_is_valid_producer_input(fleet: Path) -> None:
    events = read_events(fleet)
    assert set(events) == {s.id for s in SOURCES}
    count = 0
    for source, lines in events.items():
        for event in lines:
            assert event["source_id"] == source
            assert validate_input(event) == [], event["event_id"]
            assert event_id_ms(event["event_id"]) == parse_time_ms(event["event_time"])
            count += 1
    assert count == sum(1 for _ in simulate(SMALL))


def test_fleet_json_describes_the_sources(fleet: Path) -> None:
    described = json.loads((fleet / "fleet.json").read_text())
    assert (described["vehicles"], described["seed"], described["days"]) == (60, 11, 400)
    tiers = {(s["kind"], s["in_network"]): s["tier"] for s in described["sources"]}
    assert tiers == {
        ("connected_car", False): 1,
        ("inspection_centre", False): 1,
        ("garage", True): 2,
        ("insurer", False): 2,
        ("garage", False): 3,
        ("manual_entry", False): 4,
    }


def test_files_are_in_time_order_per_vehicle_and_replays_are_exact_copies(fleet: Path) -> None:
    for lines in read_events(fleet).values():
        seen: dict[str, dict] = {}
        last_time: dict[str, int] = defaultdict(int)
        for event in lines:
            if event["event_id"] in seen:  # a replay: byte-identical, sent later
                assert event == seen[event["event_id"]]
                continue
            seen[event["event_id"]] = event
            t = parse_time_ms(event["event_time"])
            assert t >= last_time[event["vin"]]
            last_time[event["vin"]] = t


def test_every_label_points_at_events_of_its_vehicle(fleet: Path) -> None:
    by_id = {e["event_id"]: e for lines in read_events(fleet).values() for e in lines}
    labels = read_labels(fleet)
    kinds = Counter(label["kind"] for label in labels)
    assert set(kinds) <= set(LABEL_KINDS)
    assert set(FRAUD_KINDS) <= set(kinds)  # half the fleet is a fraud case: every kind shows up
    for label in labels:
        assert label["event_ids"]
        assert all(by_id[i]["vin"] == label["vin"] for i in label["event_ids"])
        assert parse_time_ms(label["window"]["start"]) <= parse_time_ms(label["window"]["end"])
    wrecks = [label for label in labels if label["kind"] == "wreck_back_on_road"]
    for label in wrecks:
        first, *after = (by_id[i] for i in label["event_ids"])
        assert first["event_type"] == "wreck_declaration" and after
        assert all(parse_time_ms(e["event_time"]) > parse_time_ms(first["event_time"]) for e in after)
    for label in (x for x in labels if x["kind"] == "rollback_before_sale"):
        sale = by_id[label["event_ids"][-1]]
        assert sale["event_type"] == "ownership_change"


def test_typos_are_labelled_noise_and_differ_from_the_truth(fleet: Path) -> None:
    by_id = {e["event_id"]: e for lines in read_events(fleet).values() for e in lines}
    noise = [x for x in read_labels(fleet) if x["kind"] == "noise"]
    assert noise
    for label in noise:
        (event,) = (by_id[i] for i in label["event_ids"])
        assert event["source_id"] == "manual-portal"
        assert event["payload"]["odometer_km"] != label["detail"]["true_km"]


def test_no_fraud_no_fraud_labels(tmp_path: Path) -> None:
    write_fleet(SimulationConfig(vehicles=40, days=200, seed=3, fraud_rate=0.0), tmp_path)
    assert {x["kind"] for x in read_labels(tmp_path)} <= {"noise"}


def test_event_counts_scale_with_vehicles_and_days() -> None:
    def count(vehicles: int, days: int) -> int:
        return sum(
            1 for _ in simulate(SimulationConfig(vehicles=vehicles, days=days, seed=5, fraud_rate=0.0))
        )

    base = count(150, 150)
    assert 1.7 < count(300, 150) / base < 2.3
    assert 1.7 < count(150, 300) / base < 2.3


def test_lives_look_like_european_cars() -> None:
    config = SimulationConfig(vehicles=200, days=365, seed=2, fraud_rate=0.0)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    connected: set[str] = set()
    for event in simulate(config):
        km = event["payload"].get("odometer_km")
        if km is not None:
            first.setdefault(event["vin"], km)
            last[event["vin"]] = km
        if event["source_id"].startswith("cc-"):
            connected.add(event["vin"])
            loc = event["payload"]["location"]
            assert 34 < loc["lat"] < 66 and -15 < loc["lon"] < 35
    yearly = sorted(last[v] - first[v] for v in first)
    assert 6_000 < yearly[len(yearly) // 2] < 25_000  # median km driven in a year
    assert 0.3 < len(connected) / 200 < 0.6


def test_bad_config_and_foreign_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PccValueError, match="days must be between 1"):
        SimulationConfig(days=0)
    with pytest.raises(PccValueError, match="fraud_rate must be between 0 and 1, got 2"):
        SimulationConfig(fraud_rate=2)
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "someone-else.jsonl").write_text("")
    with pytest.raises(PccValueError, match="holds files of another fleet"):
        write_fleet(SimulationConfig(vehicles=1, days=10), tmp_path)


def test_cli_writes_the_fleet_and_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fleet"
    args = ["simulate", "--vehicles", "20", "--days", "90", "--seed", "1", "--out", str(out)]
    assert main([*args, "--start", "2024-03-01", "--fraud-rate", "0.3"]) == 0
    printed = capsys.readouterr().out
    total = sum(len(lines) for lines in read_events(out).values())
    assert f"{total:,} events of 20 vehicles" in printed
    assert "Events per type" in printed and "Injected (labels.jsonl)" in printed
    assert min(e["event_time"] for lines in read_events(out).values() for e in lines) >= "2024-03-01"
    assert main(["simulate", "--start", "March", "--out", str(out)]) == 2
    assert "--start: expected a date YYYY-MM-DD, got 'March'" in capsys.readouterr().err


def _readings_by_vin(fleet: Path) -> dict[str, list[tuple[int, int, str]]]:
    readings: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for lines in read_events(fleet).values():
        for e in lines:
            if "odometer_km" in e["payload"]:
                readings[e["vin"]].append(
                    (parse_time_ms(e["event_time"]), e["payload"]["odometer_km"], e["event_id"])
                )
    return {vin: sorted(set(r)) for vin, r in readings.items()}


@pytest.fixture(scope="module")
def frauds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every vehicle a fraud case: enough cases to see every variant value."""
    out = tmp_path_factory.mktemp("frauds")
    write_fleet(SimulationConfig(vehicles=400, days=365, seed=4, fraud_rate=1.0), out)
    return out


def test_every_fraud_label_records_its_variant_and_detectability(frauds: Path) -> None:
    labels = [x for x in read_labels(frauds) if x["kind"] != "noise"]
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for label in labels:
        family = VARIANT_FAMILIES[label["kind"]]
        assert set(label["variant"]) <= set(family), label
        for dimension, value in label["variant"].items():
            assert value in family[dimension], label
            seen[(label["kind"], dimension)].add(value)
        assert isinstance(label["detectable"], bool)
    for kind, family in VARIANT_FAMILIES.items():  # every value of every dimension is drawn
        for dimension, values in family.items():
            assert seen[(kind, dimension)] == set(values), (kind, dimension)
    for kind in ("rollback_before_sale", "gradual_clocking"):  # some cases the data cannot show
        of_kind = [x["detectable"] for x in labels if x["kind"] == kind]
        assert any(of_kind) and not all(of_kind), kind


def test_a_rollback_is_detectable_exactly_when_the_odometer_goes_down_on_record(frauds: Path) -> None:
    readings = _readings_by_vin(frauds)
    noise = {i for x in read_labels(frauds) if x["kind"] == "noise" for i in x["event_ids"]}
    for label in (x for x in read_labels(frauds) if x["kind"] == "rollback_before_sale"):
        start, sale = parse_time_ms(label["window"]["start"]), parse_time_ms(label["window"]["end"])
        honest = [(t, km) for t, km, i in readings[label["vin"]] if i not in noise]
        before = [km for t, km in honest if t < start]
        lowered = [km for t, km in honest if start <= t <= sale]
        goes_down = bool(before) and bool(lowered) and max(before) - min(lowered) > 50
        assert label["detectable"] == goes_down, label
        if label["variant"]["history"] == "none":
            assert not label["detectable"]


def test_a_clone_is_detectable_when_the_two_cars_readings_interleave(frauds: Path) -> None:
    readings = _readings_by_vin(frauds)
    by_id = {e["event_id"]: e for e in read_events(frauds)["manual-portal"]}
    for label in (x for x in read_labels(frauds) if x["kind"] == "cloned_identity"):
        twin = set(label["event_ids"])
        series = [i in twin for _, _, i in readings[label["vin"]]]
        switches = sum(1 for a, b in pairwise(series) if a != b)
        assert label["detectable"] == (len(twin) >= 2 and switches >= 2), label
        if label["variant"]["twin_sources"] == "manual":
            assert all("location" not in by_id[i]["payload"] for i in twin)


def test_a_clocking_starts_where_its_variant_says_and_shows_its_share(frauds: Path) -> None:
    readings = _readings_by_vin(frauds)
    for label in (x for x in read_labels(frauds) if x["kind"] == "gradual_clocking"):
        share = label["detail"]["share_counted"]
        lo, hi = {"20-40%": (0.2, 0.4), "40-60%": (0.4, 0.6), "60-80%": (0.6, 0.8)}[label["variant"]["share"]]
        assert lo - 0.005 <= share <= hi + 0.005
        start = parse_time_ms(label["window"]["start"])
        day = (start - parse_time_ms("2024-01-01T00:00:00.000Z")) / 86_400_000
        lo_d, hi_d = {"early": (0.2, 0.35), "mid": (0.35, 0.55), "late": (0.55, 0.75)}[
            label["variant"]["start"]
        ]
        assert 365 * lo_d - 1 <= day <= 365 * hi_d + 1
        times = [t for t, _, _ in readings[label["vin"]]]
        before, after = [t for t in times if t < start], [t for t in times if t >= start]
        visible = (
            len(before) >= 2 and len(after) >= 2 and before[-1] - before[0] >= 60 * 86_400_000
            and after[-1] - start >= 60 * 86_400_000
        )  # fmt: skip
        assert label["detectable"] == visible


def test_the_odometer_keeps_running_after_the_last_day() -> None:
    from pipelines.simulator.life import DAY_MS, Life

    life = Life(SimulationConfig(vehicles=1, days=30, seed=5), 0)
    end = life.start_ms + 30 * DAY_MS
    at = life.odo_at(np.array([end - DAY_MS, end, end + 10 * DAY_MS]))
    assert at[0] <= at[1] < at[2]
    assert at[2] - at[1] == pytest.approx(10 * life.km.mean())
