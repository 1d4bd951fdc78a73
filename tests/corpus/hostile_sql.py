"""What a hostile consumer sends: statements the sandbox must refuse, each with the rule it breaks.

Each attack comes in several forms (nested scopes, lateral joins, set operations, ``EXISTS``,
``FROM``-first syntax, ``QUALIFY``, comments and quoting ...): a refusal must not depend on where
in the statement the forbidden thing hides.
"""

from __future__ import annotations

#: names a CTE may not take (serving views, the engine's catalogs and the table behind the views)
SHADOWED = (
    "vehicle_history", "VEHICLE_HISTORY", '"vehicle_history"', "mileage_timeline", "sqlite_master",
    "duckdb_tables", "duckdb_views", "duckdb_databases", "pg_settings", "pg_tables", "information_schema",
)  # fmt: skip
#: relations that are not serving views
NOT_VIEWS = (
    "rt", "main.rt", "memory.main.rt", '"rt"', "sqlite_master", "sqlite_schema", "pg_settings", "pg_tables",
    "duckdb_tables", "information_schema.tables", "information_schema.columns", "v_v1.vehicle_history",
    "v_v1.main.vehicle_history", "memory.vehicle_history", "system.main.duckdb_settings", "temp.main.stage",
    "'/etc/passwd'", "'realtime/seg.parquet'", "'serving/versions/v1.duckdb'", '"/etc/hosts"',
)  # fmt: skip
TABLE_FUNCTIONS = (
    "read_csv('/etc/passwd')", "read_csv_auto('/etc/passwd')", "read_parquet('realtime/*.parquet')",
    "read_json('/etc/hosts')", "read_text('/etc/passwd')", "read_blob('/etc/passwd')", "glob('/*')",
    "query('SELECT * FROM rt')", "query_table('rt')", "range(10)", "generate_series(1, 3)",
    "duckdb_settings()", "duckdb_tables()", "duckdb_views()", "duckdb_functions()", "pragma_database_list()",
    "parquet_metadata('realtime/x.parquet')", "unnest([1, 2])", "sniff_csv('/etc/passwd')",
)  # fmt: skip
FUNCTIONS = (
    "current_setting('allowed_directories')", "getenv('HOME')", "current_query()", "version()",
    "current_database()", "current_schema()", "current_schemas(true)", "current_user", "session_user",
    "txid_current()", "nextval('s')", "setseed(0.5)", "pg_sleep(1)", "sleep_ms(10)",
    "json_serialize_sql('SELECT 1')", "json_serialize_plan('SELECT 1')", "write_log('x')", "error('x')",
    "has_table_privilege('rt', 'SELECT')", "main.abs(-1)", "system.main.version()", "pg_typeof(1)",
    "current_catalog()", "current_connection_id()", "current_query_id()", "current_transaction_id()",
    "getvariable('x')", "in_search_path('main', 'main')", "pg_get_viewdef('vehicle_history')",
    "to_aggregate_state(1)", "currval('s')",
)  # fmt: skip
STATEMENTS = (
    "COPY vehicle_history TO '/tmp/out.csv'", "COPY (SELECT 1) TO '/tmp/out.parquet'",
    "ATTACH '/tmp/evil.duckdb' AS evil", "DETACH memory", "INSTALL httpfs", "LOAD httpfs",
    "PRAGMA database_list", "SET enable_external_access = true", "RESET lock_configuration",
    "CREATE TABLE x AS SELECT 1", "CREATE OR REPLACE VIEW vehicle_history AS SELECT 1",
    "CREATE MACRO m(a) AS a", "INSERT INTO rt SELECT * FROM rt", "DELETE FROM rt", "UPDATE rt SET lat = 0",
    "DROP VIEW vehicle_history", "EXPORT DATABASE '/tmp/x'", "CHECKPOINT", "CALL pragma_version()",
    "USE memory", "VACUUM", "ANALYZE",
    "EXPLAIN SELECT 1", "BEGIN TRANSACTION", "PIVOT vehicle_history ON event_type USING count(*)",
    "CREATE SECRET (TYPE s3)", "SET VARIABLE x = 1", "PREPARE p AS SELECT 1",
)  # fmt: skip


def _wrap_relation(rel: str) -> list[str]:
    """A relation named in several scopes and syntaxes."""
    return [
        f"SELECT * FROM {rel}",
        f"FROM {rel}",
        f"SELECT count(*) FROM vehicle_history WHERE vehicle IN (SELECT vehicle FROM {rel})",
        f"SELECT 1 FROM vehicle_history v, LATERAL (SELECT * FROM {rel}) x LIMIT 1",
        f"SELECT vehicle FROM vehicle_history UNION ALL SELECT * FROM {rel}",
        f"WITH x AS (SELECT * FROM {rel}) SELECT * FROM x",
        f"SELECT * FROM vehicle_history WHERE EXISTS (SELECT 1 FROM /* c */ {rel})",
        f"SELECT * FROM vehicle_history POSITIONAL JOIN {rel}",
    ]


def corpus() -> list[tuple[str, str]]:
    """(statement, rule) pairs."""
    out: list[tuple[str, str]] = []
    for name in SHADOWED:
        out += [
            (f"WITH {name} AS (SELECT * FROM vehicle_history) SELECT vehicle, lat, payload FROM {name}", "cte_shadowing"),
            (f"SELECT * FROM vehicle_history WHERE EXISTS (WITH {name} AS (SELECT 1) SELECT * FROM {name})", "cte_shadowing"),
            (f"SELECT (WITH {name} AS MATERIALIZED (SELECT 1 AS a) SELECT a FROM {name})", "cte_shadowing"),
            (f"WITH RECURSIVE {name}(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM {name} WHERE n < 3) SELECT * FROM {name}", "cte_shadowing"),
        ]  # fmt: skip
    for rel in NOT_VIEWS:
        out += [(sql, "serving_views_only") for sql in _wrap_relation(rel)[:5]]
    for fn in TABLE_FUNCTIONS:
        out += [(sql, "no_table_functions") for sql in _wrap_relation(fn)[::2]]
    for fn in FUNCTIONS:
        out += [
            (f"SELECT {fn}", "allowed_functions"),
            (f"SELECT count(*) FROM vehicle_history WHERE {fn} IS NOT NULL", "allowed_functions"),
            (f"FROM vehicle_history SELECT vehicle QUALIFY row_number() OVER (ORDER BY {fn}) = 1", "allowed_functions"),
            (f"SELECT list_transform(flags, lambda f: {fn}) FROM vehicle_history LIMIT 1", "allowed_functions"),
            (f"SELECT * FROM vehicle_history -- {fn}\nWHERE vehicle = (SELECT {fn})", "allowed_functions"),
        ]  # fmt: skip
    out += [(sql, "select_only") for sql in STATEMENTS]
    out += [
        ("SELECT 1; SELECT 2", "single_statement"),
        ("SELECT * FROM vehicle_history; DROP VIEW vehicle_history", "single_statement"),
        ("SELECT source_id AS __pcc_source FROM vehicle_history", "reserved_name"),
        ("SELECT * FROM vehicle_history AS __pcc_t", "reserved_name"),
        ("SELECT * FROM vehicle_history AS t(__pcc_source)", "reserved_name"),
        ("WITH __pcc_x AS (SELECT 1) SELECT * FROM __pcc_x", "reserved_name"),
        ("SELECT * FROM (DESCRIBE vehicle_history)", "no_metadata"),
        ("DESCRIBE vehicle_history", "no_metadata"),
        ("SHOW TABLES", "no_metadata"),
        ("SUMMARIZE vehicle_history", "no_metadata"),
        ("SELECT * FROM (SHOW TABLES)", "no_metadata"),
    ]
    return out
