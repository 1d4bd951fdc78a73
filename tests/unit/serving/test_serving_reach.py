"""No name outside the published views resolves, whatever the engine's catalogs hold: generated
statements name every relation and function the engine knows, in many positions, and every one
that is not a serving view or an allowed function is refused before it runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.config import ServingConfig
from serving.engine.functions import ALLOWED
from serving.engine.query import QueryRunner
from serving.engine.views import SERVING_VIEWS, ServingStore
from serving.errors import ForbiddenQueryError, InvalidQueryError
from serving.market.pricing import InMemoryBilling
from tests.fixtures.serving import PRICES, make_events, publish_batch, write_segment


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueryRunner]:
    data: Path = tmp_path_factory.mktemp("reach")
    events = make_events(40, vehicles=4)
    publish_batch(data, "v1", events.slice(0, 30))
    write_segment(data, events.slice(30, 10))
    store = ServingStore(ServingConfig(data_dir=data))
    store.refresh()
    yield QueryRunner(store, InMemoryBilling(PRICES), store.config)
    store.close()


@pytest.fixture(scope="module")
def catalog(runner: QueryRunner) -> tuple[list[str], list[str], list[str]]:
    """Every relation, table function and scalar/aggregate function name the engine knows."""
    with runner.store.pin() as (cur, _):
        relations = [
            r[0]
            for r in cur.execute(
                "SELECT DISTINCT database_name || '.' || schema_name || '.' || table_name FROM duckdb_tables() "
                "UNION SELECT DISTINCT database_name || '.' || schema_name || '.' || view_name FROM duckdb_views() "
                "UNION SELECT DISTINCT table_name FROM duckdb_tables() "
                "UNION SELECT DISTINCT view_name FROM duckdb_views()"
            ).fetchall()
        ]
        tables = [
            r[0]
            for r in cur.execute(
                "SELECT DISTINCT function_name FROM duckdb_functions() "
                "WHERE function_type IN ('table', 'table_macro') AND NOT starts_with(function_name, '__')"
            ).fetchall()
        ]
        scalars = [
            r[0]
            for r in cur.execute(
                "SELECT DISTINCT function_name FROM duckdb_functions() "
                "WHERE function_type IN ('scalar', 'aggregate', 'macro') AND regexp_matches(function_name, '^[a-z_][a-z0-9_]*$')"
            ).fetchall()
        ]
    views = set(SERVING_VIEWS)
    return [r for r in relations if r not in views], tables, [f for f in scalars if f not in ALLOWED]


SCOPES = (
    "SELECT * FROM {r}",
    "SELECT vehicle FROM vehicle_history WHERE vehicle IN (SELECT * FROM {r})",
    "WITH x AS (SELECT * FROM {r}) SELECT * FROM x",
    "SELECT 1 FROM vehicle_history UNION ALL SELECT 1 FROM {r}",
    "SELECT * FROM vehicle_history v, LATERAL (SELECT * FROM {r}) y",
    "SELECT * FROM vehicle_history WHERE EXISTS (WITH z AS (SELECT 1) SELECT * FROM {r})",
)
CALLS = (
    "SELECT {f}()",
    "SELECT {f}(vehicle) FROM vehicle_history",
    "SELECT count(*) FROM vehicle_history WHERE {f}(vehicle) IS NULL",
    "SELECT list_transform(flags, lambda x: {f}(x)) FROM vehicle_history",
    "SELECT vehicle FROM vehicle_history ORDER BY {f}(vehicle)",
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_relation_outside_the_views_resolves(
    runner: QueryRunner, catalog: tuple[list[str], list[str], list[str]], data: st.DataObject
) -> None:
    relations, tables, _ = catalog
    name = data.draw(
        st.one_of(
            st.sampled_from(relations),
            st.sampled_from(tables).map(lambda t: f"{t}()"),
            st.sampled_from(["'/etc/passwd'", "'realtime/x.parquet'", "rt", "memory.main.rt"]),
        )
    )
    sql = data.draw(st.sampled_from(SCOPES)).format(r=name)
    with pytest.raises((ForbiddenQueryError, InvalidQueryError)):
        runner.run(sql)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_function_outside_the_allow_list_is_called(
    runner: QueryRunner, catalog: tuple[list[str], list[str], list[str]], data: st.DataObject
) -> None:
    _, _, functions = catalog
    name = data.draw(st.sampled_from(functions))
    sql = data.draw(st.sampled_from(CALLS)).format(f=name)
    try:
        runner.run(sql)
    except ForbiddenQueryError as exc:
        assert exc.rule == "allowed_functions", (sql, exc)
    except InvalidQueryError:
        pass  # not even valid SQL for this function: nothing ran
    else:
        pytest.fail(f"{sql} ran: {name}() is not on the allow-list")
