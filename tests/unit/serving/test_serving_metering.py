"""An aggregate's metering is kept per snapshot: charged the same as a fresh scan, rescanned once the
data changes, never reused for another category set or a query whose filter is not repeatable."""

from __future__ import annotations

from pathlib import Path

from serving.config import ServingConfig
from serving.engine.query import QueryRunner
from serving.engine.views import ServingStore
from serving.market.pricing import InMemoryBilling, Quote
from tests.fixtures.serving import PRICES, make_events, publish_batch, vehicle_id, write_segment

FLEET = "SELECT event_type, count(*) AS n, avg(odometer_km) AS km FROM vehicle_history GROUP BY 1"


def fresh_quote(store: ServingStore, sql: str) -> Quote:
    """The price a runner with nothing kept computes (a full metering scan)."""
    return QueryRunner(store, InMemoryBilling(PRICES), store.config).run(sql).quote


def make_store(tmp_path: Path) -> tuple[ServingStore, QueryRunner]:
    events = make_events(120, vehicles=6)
    publish_batch(tmp_path, "v1", events.slice(0, 80))
    write_segment(tmp_path, events.slice(80, 40))
    store = ServingStore(ServingConfig(data_dir=tmp_path))
    store.refresh()
    return store, QueryRunner(store, InMemoryBilling(PRICES), store.config)


def test_an_aggregate_over_unchanged_data_is_metered_once_and_charged_the_same(tmp_path: Path) -> None:
    store, runner = make_store(tmp_path)
    first = runner.run(FLEET)
    second = runner.run(FLEET)
    assert second.quote == first.quote == fresh_quote(store, FLEET)
    assert sum(p["rows"] for p in second.quote.by_producer.values()) == 120
    assert runner.meters.hits == 1 and runner.meters.misses == 1
    # GROUP BY without ORDER BY returns its groups in any order
    assert sorted(second.table.to_pylist(), key=str) == sorted(first.table.to_pylist(), key=str)


def test_new_rows_are_metered_as_soon_as_they_are_served(tmp_path: Path) -> None:
    store, runner = make_store(tmp_path)
    before = runner.run(FLEET).quote
    write_segment(tmp_path, make_events(30, vehicles=6, start=120))
    store.refresh()
    after = runner.run(FLEET)
    assert sum(r["n"] for r in after.table.to_pylist()) == 150
    assert sum(p["rows"] for p in after.quote.by_producer.values()) == 150
    assert after.quote == fresh_quote(store, FLEET) and after.quote.amount_cents > before.amount_cents


def test_a_kept_metering_is_not_reused_for_location_columns(tmp_path: Path) -> None:
    store, runner = make_store(tmp_path)
    plain = runner.run("SELECT avg(odometer_km) FROM vehicle_history").quote
    located = runner.run("SELECT avg(lat) FROM vehicle_history").quote
    # each row also pays precise_location (1 cent) when the query reads a location column
    assert located.amount_cents == plain.amount_cents + 120 * PRICES["precise_location"]
    assert located == fresh_quote(store, "SELECT avg(lat) FROM vehicle_history")


def test_filters_that_are_not_repeatable_are_metered_every_time(tmp_path: Path) -> None:
    store, runner = make_store(tmp_path)
    for _ in range(3):
        runner.run("SELECT count(*) FROM vehicle_history WHERE event_time < now()")
    assert len(runner.meters) == 0
    # a filter whose rows change from one evaluation to the next cannot be counted again: every row
    sampled = runner.run("SELECT count(*) FROM vehicle_history WHERE random() < 0.5").quote
    assert sampled.kind == "other" and sum(p["rows"] for p in sampled.by_producer.values()) == 120
    filtered = f"SELECT count(*) AS n FROM vehicle_history WHERE vehicle = '{vehicle_id(2)}'"
    assert runner.run(filtered).quote == runner.run(filtered).quote == fresh_quote(store, filtered)
    assert runner.meters.hits == 1


def test_a_join_is_metered_once_per_snapshot(tmp_path: Path) -> None:
    store, runner = make_store(tmp_path)
    sql = "SELECT count(*) FROM vehicle_history h JOIN mileage_timeline m USING (event_id)"
    assert runner.run(sql).quote == runner.run(sql).quote == fresh_quote(store, sql)
    assert runner.meters.hits == 1
