"""The read-only sandbox: what a consumer's SQL may reach, decided on what the names resolve to.

Three walls, all required:

1. **Scopes.** The statement is parsed by DuckDB (``extract_statements`` for the
   statement type, ``json_serialize_sql`` for the syntax tree) and every table
   name is resolved as SQL scopes it: a name is a CTE only inside the query that
   defines it (its own body, later CTEs of the same ``WITH``, and what that query
   contains), anything else must be a published serving view, unqualified.  A
   CTE may not take the name of a view, nor of anything in the engine's catalogs
   (``sqlite_master``, ``duckdb_tables``, ``pg_settings`` ...), nor the
   service's reserved prefix ``__pcc``; so a name that resolves to a view is the
   view, in every scope.  Functions are checked against an allow-list
   (:mod:`serving.engine.functions`), never against a list of forbidden ones.
   No table functions, no metadata statements, no files by path.
2. **The bound plan.** Each new query shape is also planned by the engine
   (``EXPLAIN``) and every scan it bound must be a table behind one of the
   views the query names (:meth:`Sandbox.check_plan`); a function scan, a file
   or any other table is refused whatever the syntax tree said.
3. **The engine** (see :mod:`serving.engine.views`) runs with external access
   off except for the data directories, its configuration locked, extensions
   never installed or loaded, memory and threads capped, and every consumer
   query in a ``READ ONLY`` transaction on its own cursor, interrupted at the
   time limit by the service's one watchdog thread.

The walk also resolves what metering needs (:mod:`serving.engine.lineage`):
which views are read, whether any value of a location column can reach the
answer, and the query's metering kind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import duckdb

from serving.engine.functions import FunctionPolicy
from serving.errors import ForbiddenQueryError, InvalidQueryError

#: Kinds of FROM items a consumer may use.
ALLOWED_TABLE_REFS = frozenset({"BASE_TABLE", "JOIN", "SUBQUERY", "EMPTY", "EXPRESSION_LIST"})
_TABLE_REF_TYPES = frozenset(
    {"BASE_TABLE", "JOIN", "SUBQUERY", "EMPTY", "EXPRESSION_LIST", "TABLE_FUNCTION", "SHOW_REF"}
    | {"PIVOT", "COLUMN_DATA", "DELIM_GET", "CTE", "BOUND_REF"}
)
_QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
#: identifiers the service uses in its own rewrites: no consumer alias or CTE may take them
RESERVED_PREFIX = "__pcc"
#: scans a bound plan may hold besides the tables behind the views (none reads stored data)
_INTERNAL_SCANS = frozenset(
    {
        "CTE_SCAN",
        "RECURSIVE_CTE_SCAN",
        "RECURSIVE_RECURRING_CTE_SCAN",
        "DELIM_SCAN",
        "DUMMY_SCAN",
        "COLUMN_DATA_SCAN",
        "EMPTY_RESULT",
        "CHUNK_SCAN",
        "EXPRESSION_SCAN",
    }
)
_TABLE_SCANS = frozenset({"SEQ_SCAN", "TABLE_SCAN", "SEQ_SCAN ", "INDEX_SCAN"})

QueryKind = Literal["rows", "aggregate", "other"]


@dataclass(frozen=True)
class Source:
    """One FROM item that is a serving view: the names a query uses for it and its columns."""

    view: str
    #: the name its columns are qualified with (its alias, else the view's name), lowercase
    qualifier: str
    #: the column names the query sees, in the view's order (renamed by ``AS t(a, b, ...)``), lowercase
    names: tuple[str, ...]
    #: the view's own column names, in the same order, lowercase
    columns: tuple[str, ...]

    def visible(self, column: str) -> str | None:
        """The name under which the query sees the view's ``column`` (None: not a column)."""
        try:
            return self.names[self.columns.index(column)]
        except ValueError:
            return None

    def resolve(self, name: str) -> str | None:
        """The view column a visible name stands for (None: not one of its columns)."""
        try:
            return self.columns[self.names.index(name)]
        except ValueError:
            return None


@dataclass(frozen=True)
class CheckedQuery:
    """A statement that passed the sandbox, with what metering needs to know."""

    sql: str
    kind: QueryKind
    views: frozenset[str]  # serving views it reads
    #: every view column whose values may reach the answer or decide it, per view (lowercase)
    reads: Mapping[str, frozenset[str]]
    ast: dict[str, Any] = field(repr=False, compare=False)
    #: the FROM item of a single-view query (``rows`` and ``aggregate`` kinds)
    source: Source | None = None

    @property
    def single_view(self) -> str | None:
        return self.source.view if self.source is not None else None


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def _path(node: dict[str, Any], name_key: str) -> list[str]:
    """A table's or function's qualified name as parsed (catalog, schema, name), lowercase."""
    qualified = node.get("qualified_name")
    if isinstance(qualified, dict) and qualified.get("path"):
        return [str(p).lower() for p in qualified["path"]]
    parts = [node.get("catalog_name") or node.get("catalog"), node.get("schema_name") or node.get("schema")]
    return [str(p).lower() for p in parts if p] + [str(node.get(name_key, "")).lower()]


class Sandbox:
    """Checks consumer SQL against the published serving views."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.functions = FunctionPolicy(con)
        catalog = con.execute(
            "SELECT lower(table_name) FROM duckdb_tables() UNION SELECT lower(view_name) FROM duckdb_views() "
            "UNION SELECT lower(function_name) FROM duckdb_functions() "
            "WHERE function_type IN ('table', 'table_macro', 'pragma')"
        ).fetchall()
        #: names a CTE may not take: whatever the engine could resolve them to instead
        self.catalog_names = frozenset(r[0] for r in catalog) | {"information_schema", "pg_catalog"}

    # -- the statement -----------------------------------------------------------------------------
    def check(
        self, con: duckdb.DuckDBPyConnection, sql: str, views: Mapping[str, Sequence[tuple[str, str]]]
    ) -> CheckedQuery:
        """Parse ``sql`` and return it resolved and classified, or raise 400/403 naming the problem.

        ``views``: each serving view's columns as (name, type).
        """
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
            raise ForbiddenQueryError(
                "select_only", f"{_statement_name(statements[0], kind)} statements are not allowed"
            )
        try:
            raw = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()[0]
        except duckdb.Error as exc:
            raise InvalidQueryError(str(exc)) from None
        doc: dict[str, Any] = json.loads(raw[0]) if raw else {"error": True, "error_message": "no parse"}
        if doc.get("error"):
            message = str(doc.get("error_message", "the statement does not parse"))
            if "Only SELECT statements" in message:
                raise ForbiddenQueryError("select_only", "only plain SELECT statements are allowed")
            raise InvalidQueryError(message)
        if len(doc["statements"]) != 1:
            raise ForbiddenQueryError("single_statement", "exactly one statement is allowed")
        ast = doc["statements"][0]["node"]
        columns = {v.lower(): tuple(c.lower() for c, _ in cols) for v, cols in views.items()}
        return _Resolver(self, columns).run(sql, ast)

    # -- the bound plan ----------------------------------------------------------------------------
    def check_plan(
        self,
        con: duckdb.DuckDBPyConnection,
        sql: str,
        tables: Mapping[str, frozenset[str]],
        views: frozenset[str],
    ) -> dict[str, set[str]]:
        """Every scan the engine binds for ``sql`` reads a table behind one of ``views``.

        ``tables``: each table the serving views read (``memory.main.rt`` ...) and the views
        it stands behind.  Returns, per view, the columns the plan reads of its tables
        (projections and pushed-down filters), for the lineage to add to its own.
        """
        try:
            rows = con.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchall()
        except duckdb.Error as exc:
            raise InvalidQueryError(str(exc)) from None
        read: dict[str, set[str]] = {}
        for _, text in rows:
            for node in walk(json.loads(text)):
                if "name" not in node or "children" not in node:
                    continue
                name = str(node["name"]).strip()
                info = node.get("extra_info") or {}
                if not isinstance(info, dict):
                    info = {}
                if "Function" in info and name not in _TABLE_SCANS:
                    raise ForbiddenQueryError(
                        "serving_views_only", f"the engine would read {info['Function']}: not a serving view"
                    )
                if name in _TABLE_SCANS or "Table" in info:
                    table = str(info.get("Table", "?"))
                    behind = tables.get(table, frozenset()) & views
                    if not behind:
                        raise ForbiddenQueryError(
                            "serving_views_only",
                            "the engine would read a table behind no view the query names",
                        )
                    used = _plan_columns(info)
                    for view in behind:
                        read.setdefault(view, set()).update(used)
                elif not node["children"] and name not in _INTERNAL_SCANS:
                    raise ForbiddenQueryError(
                        "serving_views_only", f"the engine would read through {name}: not a serving view"
                    )
        return read


def _statement_name(statement: Any, kind: Any) -> str:
    """The statement as its author wrote it (``INSTALL``), and DuckDB's type when it differs (``LOAD``)."""
    text = re.sub(r"/\*.*?\*/|--[^\n]*", " ", str(getattr(statement, "query", "") or ""), flags=re.S)
    words = [w for w in _words(text.upper()) if w not in ("OR", "REPLACE", "TEMP", "TEMPORARY", "FORCE")]
    written = words[0] if words else kind.name
    parsed = str(kind.name).removesuffix("_STATEMENT")
    return written if written == parsed else f"{written} (parsed as {parsed})"


def _plan_columns(info: Mapping[str, Any]) -> set[str]:
    """Column names a scan reads: its projections, plus every word of its filters (over-counting is safe)."""
    out: set[str] = set()
    for key, value in info.items():
        texts = value if isinstance(value, list) else [value]
        if key == "Projections":
            out.update(str(t).strip().lower() for t in texts if str(t).strip())
        elif "Filter" in key:
            for t in texts:
                out.update(w.lower() for w in _words(str(t)))
    return out


def _words(text: str) -> list[str]:
    word: list[str] = []
    out: list[str] = []
    for ch in text + " ":
        if ch.isalnum() or ch == "_":
            word.append(ch)
        elif word:
            out.append("".join(word))
            word = []
    return out


class _Resolver:
    """One walk of one statement: scopes, references, functions and lineage."""

    def __init__(self, sandbox: Sandbox, views: Mapping[str, tuple[str, ...]]) -> None:
        self.sandbox = sandbox
        self.views = views
        self.sources: list[Source] = []
        self.has_subquery = False
        self.has_window = False
        self.has_sample = False
        self.has_cte = False
        self.aggregate = False

    # -- entry ---------------------------------------------------------------------------------
    def run(self, sql: str, ast: dict[str, Any]) -> CheckedQuery:
        self._query(ast, frozenset())
        for node in walk(ast):
            self._check_names(node)
            cls = node.get("class")
            if cls in ("FUNCTION", "WINDOW"):
                self._check_function(node)
            if cls == "WINDOW":
                self.has_window = True
            if cls == "SUBQUERY":
                self.has_subquery = True
            if node.get("sample"):
                self.has_sample = True
        used = frozenset(s.view for s in self.sources)
        reads = self._reads(ast)
        kind: QueryKind = "other"
        source: Source | None = None
        simple = (
            ast.get("type") == "SELECT_NODE"
            and not self.has_cte
            and not self.has_subquery
            and not self.has_window
            and ast["from_table"].get("type") == "BASE_TABLE"
            and len(self.sources) == 1
        )
        if simple:
            source = self.sources[0]
            if not self._aggregates(ast):
                kind = "rows"
            elif (
                not self.has_sample
                and self._plain_filter(ast.get("where_clause"), source)
                and self._consistent(ast.get("where_clause"))
            ):
                kind = "aggregate"
            if kind == "other":
                source = None
        return CheckedQuery(sql, kind, used, reads, ast, source)

    # -- scopes --------------------------------------------------------------------------------
    def _query(self, node: dict[str, Any], scope: frozenset[str]) -> None:
        """Resolve the table names of one query node under the CTE names visible to it."""
        entries = (node.get("cte_map") or {}).get("map", []) if isinstance(node.get("cte_map"), dict) else []
        names = [str(e["key"]).lower() for e in entries]
        for name in names:
            self.has_cte = True
            self._check_cte_name(name)
        inner = scope | frozenset(names)
        for entry in entries:  # a CTE sees the WITH's names (recursive ones see themselves)
            value = entry.get("value") or {}
            self._query(value.get("query_node") or {}, inner)
            for alias in value.get("aliases") or []:
                self._reserved(str(alias), "a CTE column")
        kind = node.get("type")
        if kind == "SELECT_NODE":
            self._table_ref(node.get("from_table") or {}, inner)
            for key, value in node.items():
                if key not in ("from_table", "cte_map"):
                    self._subqueries(value, inner)
        elif kind == "SET_OPERATION_NODE":
            for child in node.get("children") or [node.get("left"), node.get("right")]:
                if isinstance(child, dict):
                    self._query(child, inner)
            self._subqueries(node.get("modifiers"), inner)
        elif kind in ("RECURSIVE_CTE_NODE", "CTE_NODE"):
            own = inner | ({str(node["cte_name"]).lower()} if node.get("cte_name") else set())
            for side in ("left", "right", "query", "child"):
                if isinstance(node.get(side), dict):
                    self._query(node[side], own)
            self._subqueries(node.get("modifiers"), own)
        elif kind is not None:
            raise ForbiddenQueryError("select_only", f"{kind} is not allowed")

    def _subqueries(self, value: Any, scope: frozenset[str]) -> None:
        """Resolve every subquery inside an expression tree (they see the enclosing CTEs)."""
        if isinstance(value, list):
            for item in value:
                self._subqueries(item, scope)
            return
        if not isinstance(value, dict):
            return
        if value.get("class") == "SUBQUERY":
            self._query(value["subquery"]["node"], scope)
            self._subqueries(value.get("child"), scope)
            return
        for item in value.values():
            self._subqueries(item, scope)

    def _table_ref(self, node: dict[str, Any], scope: frozenset[str]) -> None:
        ref_type = node.get("type")
        if ref_type == "TABLE_FUNCTION":
            name = node.get("function", {}).get("function_name", "?")
            raise ForbiddenQueryError("no_table_functions", f"table function {name}() is not allowed")
        if ref_type == "SHOW_REF":
            raise ForbiddenQueryError("no_metadata", "DESCRIBE, SHOW and SUMMARIZE are not allowed")
        if ref_type not in ALLOWED_TABLE_REFS:
            raise ForbiddenQueryError("serving_views_only", f"{ref_type} in FROM is not allowed")
        if node.get("alias"):
            self._reserved(str(node["alias"]), "an alias")
        for alias in node.get("column_name_alias") or []:
            self._reserved(str(alias), "a column alias")
        if ref_type == "JOIN":
            self._table_ref(node["left"], scope)
            self._table_ref(node["right"], scope)
            self._subqueries(node.get("condition"), scope)
        elif ref_type == "SUBQUERY":
            self._query(node["subquery"]["node"], scope)
        elif ref_type == "EXPRESSION_LIST":
            self._subqueries(node.get("values"), scope)
        elif ref_type == "BASE_TABLE":
            self._base_table(node, scope)

    def _base_table(self, node: dict[str, Any], scope: frozenset[str]) -> None:
        path = _path(node, "table_name")
        name = path[-1]
        if len(path) == 1 and name in scope:
            return  # a CTE visible here (never a view's name: _check_cte_name)
        qualifiers = path[:-1]
        if qualifiers or name not in self.views:
            shown = ".".join(path)
            raise ForbiddenQueryError(
                "serving_views_only",
                f"'{shown}' is not a serving view (readable: {', '.join(sorted(self.views))})",
            )
        columns = self.views[name]
        renamed = [str(a).lower() for a in node.get("column_name_alias") or []]
        if len(renamed) > len(columns):
            raise InvalidQueryError(f"{name} has {len(columns)} columns, {len(renamed)} names were given")
        names = tuple(renamed + list(columns[len(renamed) :]))
        qualifier = str(node.get("alias") or name).lower()
        self.sources.append(Source(name, qualifier, names, columns))

    # -- names, functions ----------------------------------------------------------------------
    def _check_cte_name(self, name: str) -> None:
        self._reserved(name, "a CTE")
        if name in self.views or name in self.sandbox.catalog_names:
            raise ForbiddenQueryError(
                "cte_shadowing", f"a CTE may not be named '{name}': that name belongs to a view or the engine"
            )

    @staticmethod
    def _reserved(name: str, what: str) -> None:
        if name.lower().startswith(RESERVED_PREFIX):
            raise ForbiddenQueryError("reserved_name", f"{what} may not start with '{RESERVED_PREFIX}'")

    def _check_names(self, node: dict[str, Any]) -> None:
        alias = node.get("alias")
        if "class" in node and isinstance(alias, str) and alias:
            self._reserved(alias, "an alias")
        if node.get("class") == "COLUMN_REF":
            parts = [str(p) for p in node.get("column_names") or []]
            for part in parts:
                self._reserved(part, "a column name")
            if len(parts) == 1 and parts[0].lower() in self.sandbox.functions.bare:
                raise ForbiddenQueryError(
                    "allowed_functions", f"'{parts[0]}' is the function {parts[0]}(), which is not allowed"
                )

    def _check_function(self, node: dict[str, Any]) -> None:
        path = _path(node, "function_name")
        name = path[-1]
        if len(path) > 1 or not self.sandbox.functions.allows(name):
            raise ForbiddenQueryError(
                "allowed_functions",
                f"function {'.'.join(path)}() is not allowed (GET /v1/catalog lists them)",
            )
        if node.get("export_state"):
            raise ForbiddenQueryError("allowed_functions", f"{name}() EXPORT_STATE is not allowed")

    # -- classification ------------------------------------------------------------------------
    def _aggregates(self, ast: dict[str, Any]) -> bool:
        if ast.get("group_expressions") or ast.get("group_sets") or ast.get("having") is not None:
            return True
        if ast.get("qualify") is not None:
            return True
        if any(m.get("type") == "DISTINCT_MODIFIER" for m in ast.get("modifiers", [])):
            return True
        if ast.get("aggregate_handling") not in (None, "STANDARD_HANDLING"):
            return True
        aggregates = self.sandbox.functions.aggregates
        return any(
            n.get("class") == "FUNCTION" and str(n.get("function_name", "")).lower() in aggregates
            for n in walk(ast)
        )

    @staticmethod
    def _plain_filter(where: Any, source: Source) -> bool:
        """True if every name in the ``WHERE`` resolves to a column of the one view read.

        The aggregate's metering then evaluates the very same filter on the very same rows.
        """
        for node in walk(where):
            if node.get("class") == "COLUMN_REF":
                names = [str(p).lower() for p in node["column_names"]]
                if names[0] == source.qualifier and len(names) > 1:
                    names = names[1:]
                if source.resolve(names[0]) is None:
                    return False
            elif node.get("class") in ("STAR", "LAMBDA", "SUBQUERY", "PARAMETER"):
                return False
        return True

    def _consistent(self, node: Any) -> bool:
        consistent = self.sandbox.functions.consistent
        return all(
            str(n.get("function_name", "")).lower() in consistent
            for n in walk(node)
            if n.get("class") in ("FUNCTION", "WINDOW")
        )

    # -- lineage -------------------------------------------------------------------------------
    def _reads(self, ast: dict[str, Any]) -> dict[str, frozenset[str]]:
        """Per view read, the columns whose values may reach the answer (conservative).

        A reference is matched against every source's visible names: a name that one
        source's rename gives to a column stands for that column; a whole row (a bare
        qualifier, ``t['lat']``, a ``*`` or ``COLUMNS(...)``) stands for all of them.
        """
        reads: dict[str, set[str]] = {s.view: set() for s in self.sources}
        qualifiers = {s.qualifier for s in self.sources}
        for node in walk(ast):
            cls = node.get("class")
            if cls == "STAR":
                excluded = {str(e).lower() for e in node.get("exclude_list") or []}
                relation = str(node.get("relation_name") or "").lower()
                for s in self.sources:
                    if relation and relation != s.qualifier:
                        continue
                    plain = not node.get("columns") and node.get("expr") is None
                    reads[s.view].update(s.resolve(n) or n for n in s.names if not (plain and n in excluded))
            elif cls == "COLUMN_REF":
                parts = [str(p).lower() for p in node["column_names"]]
                for s in self.sources:
                    hit = {s.resolve(p) for p in parts} - {None}
                    reads[s.view].update(c for c in hit if c is not None)
                    if parts[0] == s.qualifier and (len(parts) == 1 or s.resolve(parts[1]) is None):
                        reads[s.view].update(s.columns)  # the whole row
        # a bare reference to a derived table (a subquery's alias, a CTE) is a whole row of it:
        # read as every column of every view (conservative)
        derived = self._derived_qualifiers(ast) - qualifiers
        for node in walk(ast):
            if (
                node.get("class") == "COLUMN_REF"
                and len(node["column_names"]) == 1
                and str(node["column_names"][0]).lower() in derived
            ):
                for s in self.sources:
                    reads[s.view].update(s.columns)
        return {v: frozenset(c) for v, c in reads.items()}

    @staticmethod
    def _derived_qualifiers(ast: dict[str, Any]) -> set[str]:
        """Aliases of subqueries and names of CTEs: a bare reference to one is a whole row."""
        out: set[str] = set()
        for node in walk(ast):
            if node.get("type") == "SUBQUERY" and "class" not in node and node.get("alias"):
                out.add(str(node["alias"]).lower())
            cte_map = node.get("cte_map")
            if isinstance(cte_map, dict):
                out.update(str(e["key"]).lower() for e in cte_map.get("map", []))
        return out


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
