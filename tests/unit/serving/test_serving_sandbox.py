"""The sandbox refuses what a hostile consumer would try, naming the rule."""

from __future__ import annotations

import pytest

pytest.importorskip("duckdb")

from serving.config import ServingConfig
from serving.engine.query import QueryRunner
from serving.engine.views import ServingStore
from serving.errors import ForbiddenQueryError, InvalidQueryError
from serving.market.pricing import InMemoryBilling
from tests.fixtures.serving import make_events, publish_batch, write_segment

PRICES = {
    "mileage": 2, "maintenance": 3, "inspection": 4, "accident": 5, "owner_identity": 9,
    "precise_location": 1, "fraud_score": 7, "source_reputation": 1,
}  # fmt: skip

#: (statement, rule or None for a parse error)
HOSTILE: list[tuple[str, str | None]] = [
    ("SELECT * FROM read_csv('/etc/passwd')", "no_table_functions"),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", "no_table_functions"),
    ("SELECT * FROM read_parquet('/tmp/x.parquet')", "no_table_functions"),
    ("SELECT * FROM read_json('/etc/hosts')", "no_table_functions"),
    ("SELECT * FROM read_text('/etc/passwd')", "no_table_functions"),
    ("SELECT * FROM read_blob('/etc/passwd')", "no_table_functions"),
    ("SELECT * FROM glob('/*')", "no_table_functions"),
    ("SELECT * FROM '/etc/passwd'", "serving_views_only"),
    ("FROM 'realtime/*.parquet'", "serving_views_only"),
    ("SELECT * FROM duckdb_settings()", "no_table_functions"),
    ("SELECT * FROM duckdb_tables()", "no_table_functions"),
    ("SELECT * FROM duckdb_databases()", "no_table_functions"),
    ("SELECT * FROM query('SELECT 1')", "no_table_functions"),
    ("SELECT * FROM query_table('rt')", "no_table_functions"),
    ("SELECT * FROM range(10)", "no_table_functions"),
    ("SELECT * FROM information_schema.tables", "serving_views_only"),
    ("SELECT * FROM sqlite_master", "serving_views_only"),
    ("SELECT * FROM rt", "serving_views_only"),
    ("SELECT * FROM main.rt", "serving_views_only"),
    ("SELECT * FROM temp.main.stage", "serving_views_only"),
    ("SELECT current_setting('memory_limit')", "allowed_functions"),
    ("SELECT getenv('HOME')", "allowed_functions"),
    ("SELECT count(*) FROM vehicle_history WHERE vehicle IN (SELECT vehicle FROM rt)", "serving_views_only"),
    ("WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x", "no_table_functions"),
    ("SELECT 1 UNION ALL SELECT * FROM glob('/')", "no_table_functions"),
    ("COPY vehicle_history TO '/tmp/out.csv'", "select_only"),
    ("COPY (SELECT 1) TO '/tmp/out.parquet'", "select_only"),
    ("ATTACH '/tmp/evil.duckdb' AS evil", "select_only"),
    ("DETACH memory", "select_only"),
    ("INSTALL httpfs", "select_only"),
    ("LOAD httpfs", "select_only"),
    ("PRAGMA database_list", "select_only"),
    ("SET enable_external_access = true", "select_only"),
    ("RESET lock_configuration", "select_only"),
    ("CREATE TABLE x AS SELECT 1", "select_only"),
    ("CREATE OR REPLACE VIEW vehicle_history AS SELECT 1", "select_only"),
    ("CREATE MACRO m(a) AS a", "select_only"),
    ("INSERT INTO rt SELECT * FROM rt", "select_only"),
    ("UPDATE rt SET quality = 0", "select_only"),
    ("DELETE FROM rt", "select_only"),
    ("DROP VIEW vehicle_history", "select_only"),
    ("ALTER VIEW vehicle_history RENAME TO x", "select_only"),
    ("EXPORT DATABASE '/tmp/dump'", "select_only"),
    ("CALL pragma_version()", "select_only"),
    ("EXPLAIN SELECT 1", "select_only"),
    ("CHECKPOINT", "select_only"),
    ("BEGIN TRANSACTION", "select_only"),
    ("USE memory", "select_only"),
    ("SELECT 1; DROP VIEW vehicle_history", "single_statement"),
    ("SELECT 1; SELECT 2", "single_statement"),
    ("DESCRIBE vehicle_history", "no_metadata"),
    ("SHOW TABLES", "no_metadata"),
    ("SUMMARIZE vehicle_history", "no_metadata"),
    ("SELEC * FROM vehicle_history", None),
    ("SELECT * FROM vehicle_history WHERE", None),
]


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> QueryRunner:
    data = tmp_path_factory.mktemp("serving")
    events = make_events(100, vehicles=5)
    publish_batch(data, "v1", events.slice(0, 60))
    write_segment(data, events.slice(60, 40))
    config = ServingConfig(data_dir=data)
    store = ServingStore(config)
    store.refresh()
    return QueryRunner(store, InMemoryBilling(PRICES), config)


def test_there_are_at_least_forty_hostile_statements() -> None:
    assert len(HOSTILE) >= 40


@pytest.mark.parametrize(("sql", "rule"), HOSTILE)
def test_hostile_sql_is_refused_with_the_rule(runner: QueryRunner, sql: str, rule: str | None) -> None:
    expected = ForbiddenQueryError if rule else InvalidQueryError
    with pytest.raises(expected) as info:
        runner.run(sql)
    if rule:
        assert info.value.rule == rule
        assert rule in str(info.value)


def test_refusals_change_no_view(runner: QueryRunner) -> None:
    before = runner.run("SELECT count(*) AS n FROM vehicle_history").table.to_pylist()
    for sql, _ in HOSTILE:
        with pytest.raises((ForbiddenQueryError, InvalidQueryError)):
            runner.run(sql)
    assert runner.run("SELECT count(*) AS n FROM vehicle_history").table.to_pylist() == before == [{"n": 100}]


def test_engine_itself_blocks_files_even_past_the_parse(runner: QueryRunner) -> None:
    """Second wall: the engine's own settings refuse file access and configuration changes."""
    import duckdb

    with runner.store.pin() as (cur, _), pytest.raises(duckdb.PermissionException):
        cur.execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
    with runner.store.pin() as (cur, _), pytest.raises(duckdb.Error, match="locked"):
        cur.execute("SET enable_external_access = true")


def test_pinned_transaction_is_read_only(runner: QueryRunner) -> None:
    import duckdb

    with runner.store.pin() as (cur, _), pytest.raises(duckdb.TransactionException, match="read-only"):
        cur.execute("DELETE FROM rt")


def test_unknown_column_is_invalid_with_duckdb_message(runner: QueryRunner) -> None:
    with pytest.raises(InvalidQueryError, match="no_such_column"):
        runner.run("SELECT no_such_column FROM vehicle_history")


def test_allowed_queries_pass(runner: QueryRunner) -> None:
    ok = [
        "SELECT event_id FROM vehicle_history WHERE vehicle = 'v-00000000000000000000000000000001'",
        "WITH h AS (SELECT * FROM vehicle_history) SELECT count(*) FROM h",
        "SELECT v.vehicle, f.odometer_km FROM vehicle_history v JOIN mileage_timeline f USING (event_id) LIMIT 3",
        "SELECT lower(source_id), max(odometer_km) FROM vehicle_history GROUP BY 1",
    ]
    for sql in ok:
        assert runner.run(sql).table.num_rows > 0, sql


def test_a_query_beyond_the_memory_limit_spills_under_the_state_dir_not_the_working_dir(
    tmp_path, monkeypatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config = ServingConfig(data_dir=tmp_path / "data", memory_limit="64MB")
    store = ServingStore(config)
    with store.pin() as (cur, _):
        big = "SELECT count(*) FROM (SELECT i, md5(i::VARCHAR) AS m FROM range(3000000) t(i) ORDER BY m)"
        assert cur.sql(big).fetchall() == [(3_000_000,)]
        assert cur.sql("SELECT current_setting('temp_directory')").fetchall() == [
            (str(config.state_dir / "spill"),)
        ]
    assert (config.state_dir / "spill").is_dir()
    assert list(cwd.iterdir()) == []
    store.close()
