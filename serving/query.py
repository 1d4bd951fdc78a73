"""Running a checked query on a pinned snapshot: limits, metering and the price.

The same metering runs for a quote (dry run) and for the paid query, on the
same kind of snapshot, so a query over data that did not change costs exactly
what it was quoted.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from serving.config import ServingConfig
from serving.errors import (
    ForbiddenQueryError,
    InvalidQueryError,
    QueryTimeoutError,
    ResultTooLargeError,
    ServingError,
)
from serving.pricing import CONSORTIUM, LOCATION_COLUMNS, PriceBook, Quote, Usage, category_sql, price_usage
from serving.sandbox import CheckedQuery, Sandbox
from serving.views import ServingStore

_SRC, _Q, _CAT = "__pcc_source", "__pcc_quality", "__pcc_category"


@dataclass(frozen=True)
class QueryResult:
    table: pa.Table
    quote: Quote
    version: str | None


def _engine_error(exc: duckdb.Error) -> ServingError:
    if isinstance(exc, duckdb.InterruptException):
        return QueryTimeoutError("the query ran past the time limit and was stopped")
    if isinstance(exc, duckdb.PermissionException):
        return ForbiddenQueryError("engine_policy", str(exc))
    if isinstance(exc, duckdb.OutOfMemoryException):
        return ResultTooLargeError(f"the query needs more memory than allowed: {exc}")
    return InvalidQueryError(str(exc))


def _inline_aliases(node: Any, aliases: dict[str, dict[str, Any]]) -> Any:
    """``WHERE`` with each reference to a select-list alias replaced by its expression.

    DuckDB lets a ``WHERE`` name a select-list alias; the metering query of an
    aggregate replaces the select list, so the aliased expressions are put in place.
    """
    if isinstance(node, list):
        return [_inline_aliases(n, aliases) for n in node]
    if not isinstance(node, dict):
        return node
    names = node.get("column_names")
    if (
        node.get("class") == "COLUMN_REF"
        and isinstance(names, list)
        and len(names) == 1
        and names[0] in aliases
    ):
        return {**copy.deepcopy(aliases[names[0]]), "alias": ""}
    return {k: _inline_aliases(v, aliases) for k, v in node.items()}


class QueryRunner:
    """Checks, meters, prices and runs consumer SQL."""

    def __init__(self, store: ServingStore, prices: PriceBook, config: ServingConfig) -> None:
        self.store = store
        self.prices = prices
        self.config = config
        self._items: dict[tuple[str, frozenset[str], frozenset[str]], list[Any]] = {}
        with store.pin() as (cur, _):
            self.sandbox = Sandbox(cur)

    def check(self, sql: str) -> CheckedQuery:
        with self.store.pin() as (cur, _):
            return self.sandbox.check(cur, sql, self.store.columns())

    # -- helpers -------------------------------------------------------------------------------
    def _meter_items(self, view: str, columns: frozenset[str], cur: duckdb.DuckDBPyConnection) -> list[Any]:
        names = frozenset(c for c, _ in self.store.columns()[view])
        key = (view, columns & LOCATION_COLUMNS, names)
        cached = self._items.get(key)
        if cached is None:
            cached = self._items[key] = self._meter_items_uncached(view, columns, names, cur)
        return copy.deepcopy(cached)

    def _meter_items_uncached(
        self, view: str, columns: frozenset[str], names: frozenset[str], cur: duckdb.DuckDBPyConnection
    ) -> list[Any]:
        src = "source_id" if "source_id" in names else f"'{CONSORTIUM}'"
        quality = "quality" if "quality" in names else "1.0"
        template = (
            f"SELECT {src} AS {_SRC}, {quality} AS {_Q}, {category_sql(view, columns)} AS {_CAT} FROM x"
        )
        doc = json.loads(cur.execute("SELECT json_serialize_sql(?::VARCHAR)", [template]).fetchall()[0][0])
        return list(doc["statements"][0]["node"]["select_list"])

    @staticmethod
    def _to_sql(ast: dict[str, Any], cur: duckdb.DuckDBPyConnection) -> str:
        doc = {"error": False, "statements": [{"node": ast, "named_param_map": []}]}
        return str(cur.execute("SELECT json_deserialize_sql(?::JSON)", [json.dumps(doc)]).fetchall()[0][0])

    @staticmethod
    def _usage_sql(inner: str) -> str:
        return (
            f"SELECT {_SRC}, {_CAT}, count(*), CAST(coalesce(sum(round({_Q} * 10000)), 0) AS BIGINT) "
            f"FROM ({inner}) GROUP BY ALL"
        )

    def _timed(self, cur: duckdb.DuckDBPyConnection, fn: Callable[[], Any]) -> Any:
        timer = threading.Timer(self.config.query_timeout_s, cur.interrupt)
        timer.start()
        try:
            return fn()
        except duckdb.Error as exc:
            raise _engine_error(exc) from None
        finally:
            timer.cancel()

    def _meter(self, q: CheckedQuery, cur: duckdb.DuckDBPyConnection) -> tuple[list[Usage], str]:
        """Rows used by a query (for the quote and for aggregates / other queries)."""
        if q.kind == "rows":
            sql = self._usage_sql(self._rows_sql(q, cur))
        elif q.kind == "aggregate":
            view = next(iter(q.views))
            ast = copy.deepcopy(q.ast)
            names = {c for c, _ in self.store.columns()[view]}
            aliases = {
                i["alias"]: i for i in ast["select_list"] if i.get("alias") and i["alias"] not in names
            }
            ast.update(
                where_clause=_inline_aliases(ast.get("where_clause"), aliases),
                select_list=self._meter_items(view, q.columns, cur),
                group_expressions=[],
                group_sets=[],
                having=None,
                qualify=None,
                modifiers=[],
                aggregate_handling="STANDARD_HANDLING",
            )
            sql = self._usage_sql(self._to_sql(ast, cur))
        else:
            parts = []
            for view in sorted(q.views):
                items = self._meter_items(view, q.columns, cur)
                ast = {
                    "type": "SELECT_NODE", "modifiers": [], "cte_map": {"map": []}, "select_list": items,
                    "from_table": {"type": "BASE_TABLE", "alias": "", "sample": None, "schema_name": "",
                                   "table_name": view, "column_name_alias": [], "catalog_name": "",
                                   "at_clause": None, "query_location": 0, "query_location_length": 0},
                    "where_clause": None, "group_expressions": [], "group_sets": [],
                    "aggregate_handling": "STANDARD_HANDLING", "having": None, "sample": None, "qualify": None,
                }  # fmt: skip
                parts.append(self._to_sql(ast, cur))
            sql = self._usage_sql(" UNION ALL ".join(parts)) if parts else None  # type: ignore[assignment]
            if sql is None:
                return [], q.kind
        rows = self._timed(cur, lambda: cur.execute(sql).fetchall())
        return [Usage(str(s), str(c), int(n), int(qs)) for s, c, n, qs in rows], q.kind

    def _rows_sql(self, q: CheckedQuery, cur: duckdb.DuckDBPyConnection) -> str:
        ast = copy.deepcopy(q.ast)
        ast["select_list"] = [*ast["select_list"], *self._meter_items(next(iter(q.views)), q.columns, cur)]
        return self._to_sql(ast, cur)

    def _quote(self, usage: list[Usage], kind: str, version: str | None) -> Quote:
        return price_usage(
            usage, self.prices.prices(), self.prices.fee_bps(), self.config.quality_weight_bps, kind, version
        )

    # -- public --------------------------------------------------------------------------------
    def quote(self, sql: str) -> tuple[CheckedQuery, Quote]:
        """Price a query without returning its rows (a dry run)."""
        with self.store.pin() as (cur, version):
            q = self.sandbox.check(cur, sql, self.store.columns())
            usage, kind = self._meter(q, cur)
            return q, self._quote(usage, kind, version)

    def run(self, sql: str, before_return: Callable[[Quote], None] | None = None) -> QueryResult:
        """Run a query within the limits and price the rows it used.

        ``before_return`` sees the final price before any row leaves (the payment
        check); if it raises, nothing is returned and nothing is charged.
        """
        with self.store.pin() as (cur, version):
            q = self.sandbox.check(cur, sql, self.store.columns())
            run_sql = self._rows_sql(q, cur) if q.kind == "rows" else q.sql
            table = self._timed(cur, lambda: self._fetch(cur, run_sql))
            if q.kind == "rows":
                usage = self._usage_from_table(table)
                table = table.drop_columns([_SRC, _Q, _CAT])
                kind = "rows"
            else:
                usage, kind = self._meter(q, cur)
            quote = self._quote(usage, kind, version)
        if before_return is not None:
            before_return(quote)
        return QueryResult(table, quote, version)

    def _fetch(self, cur: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
        reader = cur.sql(sql).to_arrow_reader(8192)
        batches: list[pa.RecordBatch] = []
        n = 0
        for batch in reader:
            n += batch.num_rows
            if n > self.config.max_rows:
                raise ResultTooLargeError(
                    f"the query returns more than {self.config.max_rows} rows; add a LIMIT or aggregate"
                )
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=reader.schema)

    @staticmethod
    def _usage_from_table(table: pa.Table) -> list[Usage]:
        if table.num_rows == 0:
            return []
        qbps = pc.round(pc.multiply(table[_Q].cast(pa.float64()), 10000.0))
        t = pa.table({"s": table[_SRC], "c": table[_CAT], "q": pc.fill_null(qbps, 0.0)})
        grouped = t.group_by(["s", "c"]).aggregate([("q", "count"), ("q", "sum")]).to_pylist()
        return [Usage(str(g["s"]), str(g["c"]), int(g["q_count"]), int(g["q_sum"])) for g in grouped]
