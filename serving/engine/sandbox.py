"""The read-only sandbox: what a consumer's SQL may do, decided by DuckDB's own parser.

Two walls, both required:

1. The statement is parsed by DuckDB (``extract_statements`` for the statement
   type, ``json_serialize_sql`` for the syntax tree) and walked: one ``SELECT``
   only, reading only the published serving views (or its own CTEs), no table
   functions (``read_csv``, ``glob``, ``query`` ...), no replacement scans of
   files (``FROM '/etc/passwd'``), no metadata (``DESCRIBE``, ``SHOW``), no
   functions that read settings or the environment.  A refusal names the rule.
2. The engine itself (see :mod:`serving.engine.views`) runs with external access off
   except for the data directories, its configuration locked, extensions never
   installed or loaded, memory and threads capped, and every consumer query in a
   ``READ ONLY`` transaction on its own cursor, interrupted at the time limit
   by the service's one watchdog thread (:mod:`serving.engine.watchdog`).

The parse also classifies the query for metering (see :mod:`serving.pricing`):
a plain row query over one view, an aggregate over one view, or anything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import duckdb

from serving.errors import ForbiddenQueryError, InvalidQueryError

#: Scalar functions that would leak the engine's settings or the host's environment.
DENIED_FUNCTIONS = frozenset({"current_setting", "getenv", "current_setting_value"})
DENIED_FUNCTION_PREFIXES = ("duckdb_", "pragma_", "pg_")
#: Kinds of FROM items a consumer may use.
ALLOWED_TABLE_REFS = frozenset({"BASE_TABLE", "JOIN", "SUBQUERY", "EMPTY", "EXPRESSION_LIST"})
_TABLE_REF_TYPES = frozenset(
    {"BASE_TABLE", "JOIN", "SUBQUERY", "EMPTY", "EXPRESSION_LIST", "TABLE_FUNCTION", "SHOW_REF"}
    | {"PIVOT", "COLUMN_DATA", "DELIM_GET", "CTE", "BOUND_REF"}
)

QueryKind = Literal["rows", "aggregate", "other"]


@dataclass(frozen=True)
class CheckedQuery:
    """A statement that passed the sandbox, with what metering needs to know."""

    sql: str
    kind: QueryKind
    views: frozenset[str]  # serving views it reads
    columns: frozenset[str]  # column names it mentions ("*" for a star)
    ast: dict[str, Any] = field(repr=False, compare=False)

    @property
    def single_view(self) -> str | None:
        return next(iter(self.views)) if self.kind != "other" else None


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _cte_names(ast: Any) -> set[str]:
    names: set[str] = set()
    for node in _walk(ast):
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            names.update(str(entry["key"]).lower() for entry in cte_map.get("map", []))
    return names


class Sandbox:
    """Checks consumer SQL against the published serving views."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        rows = con.execute("SELECT DISTINCT function_name, function_type FROM duckdb_functions()").fetchall()
        self._aggregates = frozenset(name for name, kind in rows if kind == "aggregate")
        self._not_scalar = frozenset(
            name for name, kind in rows if kind in ("table", "table_macro", "pragma")
        ) - {name for name, kind in rows if kind in ("scalar", "aggregate", "window", "macro")}

    def check(self, con: duckdb.DuckDBPyConnection, sql: str, views: Mapping[str, object]) -> CheckedQuery:
        """Parse ``sql`` and return it classified, or raise 400/403 naming the problem."""
        if not sql.strip():
            raise InvalidQueryError("the query is empty")
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise InvalidQueryError(str(exc)) from None
        if len(statements) != 1:
            raise ForbiddenQueryError(
                "single_statement", f"exactly one statement is allowed, got {len(statements)}"
            )
        kind = statements[0].type
        if kind != duckdb.StatementType.SELECT:
            raise ForbiddenQueryError("select_only", f"{kind.name} statements are not allowed")
        try:
            raw = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()[0]
        except duckdb.Error as exc:
            raise InvalidQueryError(str(exc)) from None
        doc = json.loads(raw[0]) if raw else {"error": True, "error_message": "no parse"}
        if doc.get("error"):
            raise InvalidQueryError(str(doc.get("error_message", "the statement does not parse")))
        if len(doc["statements"]) != 1:
            raise ForbiddenQueryError("single_statement", "exactly one statement is allowed")
        ast = doc["statements"][0]["node"]
        return self._classify(sql, ast, {v.lower() for v in views})

    def _classify(self, sql: str, ast: dict[str, Any], views: set[str]) -> CheckedQuery:
        ctes = _cte_names(ast)
        used: set[str] = set()
        columns: set[str] = set()
        has_subquery = False
        for node in _walk(ast):
            ref_type = node.get("type")
            if "class" not in node and ref_type in _TABLE_REF_TYPES:
                self._check_table_ref(node, views, ctes, used)
            cls = node.get("class")
            if cls in ("FUNCTION", "WINDOW"):
                self._check_function(node)
            elif cls == "COLUMN_REF":
                columns.add(str(node["column_names"][-1]).lower())
            elif cls == "STAR":
                columns.add("*")
            elif cls == "SUBQUERY" or ref_type == "SUBQUERY":
                has_subquery = True
        simple = (
            ast.get("type") == "SELECT_NODE"
            and not ctes
            and not has_subquery
            and ast["from_table"].get("type") == "BASE_TABLE"
            and len(used) == 1
        )
        kind: QueryKind = "other"
        if simple:
            kind = "aggregate" if self._aggregates_rows(ast) else "rows"
        return CheckedQuery(sql, kind, frozenset(used), frozenset(columns), ast)

    def _check_table_ref(self, node: dict[str, Any], views: set[str], ctes: set[str], used: set[str]) -> None:
        ref_type = node["type"]
        if ref_type == "TABLE_FUNCTION":
            name = node.get("function", {}).get("function_name", "?")
            raise ForbiddenQueryError("no_table_functions", f"table function {name}() is not allowed")
        if ref_type == "SHOW_REF":
            raise ForbiddenQueryError("no_metadata", "DESCRIBE, SHOW and SUMMARIZE are not allowed")
        if ref_type not in ALLOWED_TABLE_REFS:
            raise ForbiddenQueryError("serving_views_only", f"{ref_type} in FROM is not allowed")
        if ref_type != "BASE_TABLE":
            return
        name = str(node.get("table_name", "")).lower()
        catalog = str(node.get("catalog_name", "")).lower()
        schema = str(node.get("schema_name", "")).lower()
        if not catalog and not schema and name in ctes:
            return
        if catalog not in ("", "memory") or schema not in ("", "main") or name not in views:
            shown = ".".join(p for p in (catalog, schema, name) if p)
            raise ForbiddenQueryError(
                "serving_views_only",
                f"'{shown}' is not a serving view (readable: {', '.join(sorted(views))})",
            )
        used.add(name)

    def _check_function(self, node: dict[str, Any]) -> None:
        name = str(node.get("function_name", "")).lower()
        if (
            name in DENIED_FUNCTIONS
            or name.startswith(DENIED_FUNCTION_PREFIXES)
            or name in self._not_scalar
            or node.get("schema") not in ("", None)
            or node.get("catalog") not in ("", None)
        ):
            raise ForbiddenQueryError("allowed_functions", f"function {name}() is not allowed")

    def _aggregates_rows(self, ast: dict[str, Any]) -> bool:
        if ast.get("group_expressions") or ast.get("having") is not None:
            return True
        if any(m.get("type") == "DISTINCT_MODIFIER" for m in ast.get("modifiers", [])):
            return True
        for node in _walk(ast.get("select_list", [])):
            if (
                node.get("class") == "FUNCTION"
                and str(node.get("function_name", "")).lower() in self._aggregates
            ):
                return True
        return False


def engine_settings(
    memory_limit: str, threads: int, allowed_dirs: list[str], spill_dir: str | None = None
) -> list[str]:
    """The statements that lock the engine down, in the order they must run.

    ``spill_dir``: where DuckDB writes what a query cannot hold within ``memory_limit``
    (by default ``.tmp`` under the process's working directory).
    """
    dirs = ", ".join("'" + d.replace("'", "''") + "'" for d in allowed_dirs)
    spill = [f"SET temp_directory = '{spill_dir.replace(chr(39), chr(39) * 2)}'"] if spill_dir else []
    return [
        *spill,
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET allow_community_extensions = false",
        f"SET memory_limit = '{memory_limit}'",
        f"SET threads = {int(threads)}",
        f"SET allowed_directories = [{dirs}]",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ]
