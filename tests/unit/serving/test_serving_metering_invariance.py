"""A query never costs less than the rows whose values can appear in its answer.

Two checks of the one invariant:

* a corpus of (baseline, rewrite) pairs where the rewrite reveals at least what the baseline
  does (the same values through aliases, renames, whole-row structs, list aggregates, windows,
  subqueries, CTEs, set operations ...): every rewrite is refused or costs at least the
  baseline, for every producer;
* generated queries over a view whose rows all cost the same: the price is at least that
  unit price times the rows whose values can appear (plus the location surcharge when a
  location value can appear).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.dataset import MASTER_COLUMNS
from serving.config import ServingConfig
from serving.engine.query import QueryRunner
from serving.engine.views import ServingStore
from serving.errors import ServingError
from serving.market.pricing import InMemoryBilling, Quote
from tests.fixtures.serving import PRICES, make_events, publish_batch, vehicle_id, write_segment

V = vehicle_id(2)
LAT = MASTER_COLUMNS.index("lat")
SRC = MASTER_COLUMNS.index("source_id")
#: ``AS t(c0, ..., c9)``: renames every column up to ``lat`` (c9) and ``source_id`` (c3)
RENAME = "t(" + ", ".join(f"c{i}" for i in range(LAT + 1)) + ")"


def _pairs() -> list[tuple[str, str]]:
    rows = f"SELECT vehicle, lat FROM vehicle_history WHERE vehicle = '{V}'"
    lat_only = f"SELECT lat FROM vehicle_history WHERE vehicle = '{V}'"
    count = f"SELECT count(*) FROM vehicle_history WHERE vehicle = '{V}'"
    source = f"SELECT source_id, odometer_km FROM vehicle_history WHERE vehicle = '{V}'"
    where = f"vehicle = '{V}'"
    out: list[tuple[str, str]] = []
    for base in (rows, lat_only):
        out += [
            (base, f"SELECT t.vehicle, t.lat FROM vehicle_history t WHERE {where}"),
            (base, f"SELECT * FROM ({base}) s"),
            (base, f"WITH x AS ({base}) SELECT * FROM x"),
            (base, f"{base} UNION ALL SELECT NULL, NULL WHERE false" if base == rows else f"{base} UNION ALL SELECT NULL WHERE false"),
            (base, f"SELECT list(struct_pack(vehicle, lat)) FROM vehicle_history WHERE {where}"),
            (base, f"SELECT list(t) OVER () FROM vehicle_history t WHERE {where} LIMIT 1"),
            (base, f"SELECT t FROM vehicle_history t WHERE {where}"),
            (base, f"SELECT t['lat'], t.vehicle FROM vehicle_history t WHERE {where}"),
            (base, f"SELECT COLUMNS('^(vehicle|lat)$') FROM vehicle_history WHERE {where}"),
            (base, f"SELECT * EXCLUDE (payload) FROM vehicle_history WHERE {where}"),
            (base, f"SELECT string_agg(lat::VARCHAR, ',') FROM vehicle_history WHERE {where}"),
            (base, f"SELECT histogram(lat) FROM vehicle_history WHERE {where}"),
            (base, f"SELECT map(list(event_id), list(lat)) FROM vehicle_history WHERE {where}"),
            (base, f"SELECT array_agg(lat ORDER BY event_time) FROM vehicle_history WHERE {where}"),
            (base, f"FROM vehicle_history SELECT vehicle, lat WHERE {where}"),
            (base, f"SELECT vehicle, lat FROM vehicle_history WHERE {where} ORDER BY lat DESC"),
            (base, f"SELECT c4, c9 FROM vehicle_history AS {RENAME} WHERE c4 = '{V}'"),
            (base, f"SELECT c9 AS vehicle FROM vehicle_history AS {RENAME} WHERE c4 = '{V}'"),
            (base, f"SELECT x.vehicle, x.lat FROM (SELECT 1 AS one) o, LATERAL (SELECT vehicle, lat FROM vehicle_history WHERE {where}) x"),
            (base, f"SELECT vehicle, lat FROM vehicle_history WHERE {where} QUALIFY count(*) OVER () > 0"),
            (base, f"SELECT vehicle, lat FROM vehicle_history WHERE {where} AND EXISTS (SELECT 1)"),
            (base, f"SELECT DISTINCT vehicle, lat FROM vehicle_history WHERE {where}"),
            (base, f"SELECT vehicle, lat FROM vehicle_history WHERE VEHICLE = '{V}'"),
            (base, f"SELECT \"vehicle\", \"LAT\" FROM vehicle_history WHERE {where}"),
            (base, f"SELECT vehicle, lat FROM vehicle_history /* all of it */ WHERE {where} LIMIT 1000"),
        ]  # fmt: skip
    out += [
        (count, f"SELECT NULL AS Vehicle, count(*) FROM vehicle_history WHERE Vehicle = '{V}'"),
        (count, f"SELECT count(*) FROM vehicle_history WHERE VEHICLE = '{V}'"),
        (count, f"SELECT sum(1) FROM vehicle_history t WHERE t.vehicle = '{V}'"),
        (count, f"SELECT count(*) OVER () FROM vehicle_history WHERE {where} LIMIT 1"),
        (count, f"SELECT count(*) FROM (SELECT * FROM vehicle_history WHERE {where})"),
        (count, f"SELECT (SELECT count(*) FROM vehicle_history WHERE {where})"),
        (count, f"SELECT count(*) FROM vehicle_history AS {RENAME} WHERE c4 = '{V}'"),
        (count, f"SELECT count(*) FROM vehicle_history WHERE {where} HAVING count(*) > 0"),
        (count, f"SELECT count(*) FROM vehicle_history WHERE {where} AND random() < 2"),
        (count, f"SELECT count(*) FROM vehicle_history USING SAMPLE 100%  WHERE {where}"),
        (source, f"SELECT c3, odometer_km FROM vehicle_history AS {RENAME} WHERE c4 = '{V}'"),
        (source, f"SELECT c0 AS source_id, odometer_km FROM vehicle_history AS t(source_id, c1, c2, c0) WHERE vehicle = '{V}'"),
        (source, f"SELECT t.c3, t.odometer_km FROM vehicle_history AS {RENAME} WHERE t.c4 = '{V}'"),
        (source, f"SELECT * FROM (SELECT source_id, odometer_km FROM vehicle_history WHERE {where}) AS s(a, b)"),
        (source, f"SELECT source_id AS quality, odometer_km FROM vehicle_history WHERE {where}"),
        (source, f"SELECT 'cc-aurora' AS source_id, odometer_km FROM vehicle_history WHERE {where}"),
        (source, f"SELECT source_id, odometer_km FROM vehicle_history WHERE {where} UNION SELECT source_id, odometer_km FROM mileage_timeline WHERE {where}"),
    ]  # fmt: skip
    return out


PAIRS = _pairs()


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueryRunner]:
    data: Path = tmp_path_factory.mktemp("invariance")
    events = make_events(120, vehicles=6)
    publish_batch(data, "v1", events.slice(0, 80))
    write_segment(data, events.slice(80, 40))
    store = ServingStore(ServingConfig(data_dir=data, max_rows=10_000))
    store.refresh()
    yield QueryRunner(store, InMemoryBilling(PRICES), store.config)
    store.close()


def _price(runner: QueryRunner, sql: str) -> Quote | None:
    try:
        return runner.run(sql).quote
    except ServingError:
        return None


def test_the_corpus_has_sixty_pairs_or_more() -> None:
    assert len(PAIRS) >= 60


@pytest.mark.parametrize(("baseline", "rewrite"), PAIRS)
def test_a_rewrite_that_reveals_as_much_costs_as_much_for_every_producer(
    runner: QueryRunner, baseline: str, rewrite: str
) -> None:
    base = runner.run(baseline).quote
    assert base.amount_cents > 0
    other = _price(runner, rewrite)
    if other is None:
        return  # refused: nothing revealed, nothing charged
    assert other.amount_cents >= base.amount_cents, (other.as_dict(), base.as_dict())
    for producer, paid in base.by_producer.items():
        assert other.by_producer.get(producer, {"cents": 0})["cents"] >= paid["cents"], producer


# -- generated queries over a view whose every row costs the same -------------------------------------

UNIT = PRICES["mileage"]
LOCATION = {"lat", "lon", "payload"}
COLUMNS = ("vehicle", "odometer_km", "lat", "lon", "event_time", "quality", "flags", "payload", "event_id")


@pytest.fixture(scope="module")
def uniform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueryRunner]:
    """80 events, all odometer readings of one producer: every row costs UNIT (+1 with a location)."""
    data: Path = tmp_path_factory.mktemp("uniform")
    events = make_events(80, vehicles=5)
    n = events.num_rows
    events = events.set_column(
        events.schema.get_field_index("event_type"), "event_type", pa.array(["odometer_reading"] * n)
    ).set_column(events.schema.get_field_index("source_id"), "source_id", pa.array(["cc-aurora"] * n))
    write_segment(data, events)
    store = ServingStore(ServingConfig(data_dir=data, max_rows=10_000))
    store.refresh()
    yield QueryRunner(store, InMemoryBilling(PRICES), store.config)
    store.close()


@st.composite
def queries(draw: st.DrawFn) -> tuple[str, str, bool]:
    """(query, the filter whose rows' values can appear, whether a location value can appear)."""
    cols = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=3, unique=True))
    mode = draw(st.sampled_from(["rows", "list", "count_window", "struct", "string_agg", "first"]))
    pred = draw(
        st.sampled_from(
            ["true", f"vehicle = '{vehicle_id(1)}'", "odometer_km > 1030", "lat > 48", "quality >= 1"]
        )
    )
    limit = draw(st.sampled_from(["", " LIMIT 1", " LIMIT 7"]))
    wrapper = draw(st.sampled_from(["none", "subquery", "cte", "union", "from_first"]))
    alias = draw(st.sampled_from(["", " t", " AS v"]))
    ref = alias.split()[-1] if alias else "vehicle_history"
    listed = ", ".join(cols)
    location = bool(set(cols) & LOCATION) or mode == "struct"
    if mode == "rows":
        select = listed
    elif mode == "list":
        select = ", ".join(f"list({c})" for c in cols)
    elif mode == "count_window":
        select = f"{listed}, list({cols[0]}) OVER ()"
    elif mode == "struct":
        select = ref
    elif mode == "string_agg":
        select = f"string_agg({cols[0]}::VARCHAR, '|')"
        location = cols[0] in LOCATION
    else:
        select = f"first({cols[0]} ORDER BY event_time)"
        location = cols[0] in LOCATION
    inner = f"SELECT {select} FROM vehicle_history{alias} WHERE {pred}"
    if wrapper == "from_first":
        sql = f"FROM vehicle_history{alias} SELECT {select} WHERE {pred}{limit}"
    elif wrapper == "subquery":
        sql = f"SELECT * FROM ({inner}) s{limit}"
    elif wrapper == "cte":
        sql = f"WITH s AS ({inner}) SELECT * FROM s{limit}"
    elif wrapper == "union":
        sql = f"{inner} UNION ALL ({inner} LIMIT 0){limit}"
    else:
        sql = f"{inner}{limit}"
    return sql, pred, location


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=queries())
def test_generated_queries_never_cost_less_than_the_rows_they_reveal(
    uniform: QueryRunner, q: tuple[str, str, bool]
) -> None:
    sql, pred, location = q
    result = uniform.run(sql)
    if "list(" in sql or "string_agg" in sql or "first(" in sql or " OVER " in sql:
        # every row the filter lets through can show in an aggregate or a window's value
        with uniform.store.pin() as (cur, _):
            revealed = int(cur.execute(f"SELECT count(*) FROM vehicle_history WHERE {pred}").fetchall()[0][0])
    else:
        revealed = result.table.num_rows  # each answer row is one view row
    unit = UNIT + (PRICES["precise_location"] if location else 0)
    assert result.quote.amount_cents >= revealed * unit, (sql, result.quote.as_dict(), revealed)
