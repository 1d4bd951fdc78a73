"""Running a checked query on a pinned snapshot: limits, metering and the price.

The same metering runs for a quote (dry run) and for the paid query, on the
same kind of snapshot, so a query over data that did not change costs exactly
what it was quoted.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from serving.config import ServingConfig
from serving.engine.sandbox import CheckedQuery, Sandbox, Source
from serving.engine.shapes import ShapeCache, fill, renders_cleanly, same_tree, split_literals
from serving.engine.views import ServingStore, StoreBusy
from serving.engine.watchdog import Watchdog
from serving.errors import (
    ForbiddenQueryError,
    InvalidQueryError,
    QueryTimeoutError,
    ResultTooLargeError,
    ServingError,
)
from serving.market.pricing import (
    CONSORTIUM,
    LOCATION_COLUMNS,
    LOCATION_VIEW,
    PriceBook,
    Quote,
    Usage,
    price_usage,
    row_categories,
)

_T = TypeVar("_T")

_SRC, _Q, _TYPE, _VIEW = "__pcc_source", "__pcc_quality", "__pcc_event_type", "__pcc_view"
_META = [_SRC, _Q, _TYPE]
#: rows above which the metering columns of a row query are grouped by Arrow instead of Python
_ARROW_GROUP_ROWS = 4096
#: the view columns a row's metering reads (producer, quality, event type), when a ``*`` returns them
_OWN_METER = ("source_id", "quality", "event_type")


@dataclass(frozen=True)
class Plan:
    """What a query shape runs: its rendered SQL with the metering, built once per shape.

    ``run`` is the row query with the metering columns appended (``rows`` kind;
    None: the query's own SQL); ``meter`` counts the rows used, grouped by
    (view, producer, event type).  Both may hold literal sentinels
    (:mod:`serving.engine.shapes`) when ``shaped``.
    """

    kind: str
    views: frozenset[str]
    location: bool
    run: str | None
    meter: str | None
    shaped: bool
    #: the metering reads only the snapshot (no volatile function): its result is kept per snapshot
    stable_meter: bool = False
    #: a row query whose own columns carry the metering (``SELECT *``): producer, quality and event
    #: type are read from them and the query runs as written (None: metering columns appended)
    own_meter: tuple[str, str, str] | None = None


_UNSHAPED = Plan("other", frozenset(), False, None, None, False)


@dataclass(frozen=True)
class QueryResult:
    table: pa.Table
    quote: Quote
    version: str | None


#: a stopped query is interrupted again this often until it returns (a first interrupt can land
#: while DuckDB still binds the statement, and is then lost)
_INTERRUPT_AGAIN_S = 0.005


class OverBudget(Exception):
    """A run given ``budget_s`` was stopped at it, or did not start because the engine was
    loading new data: nothing was returned or charged."""


def _streamed_error(message: str) -> duckdb.Error:
    """The DuckDB error behind an Arrow stream's ``OSError`` ("INTERRUPT Error: Interrupted!", ...)."""
    if message.startswith("INTERRUPT Error"):
        return duckdb.InterruptException(message)
    if message.startswith("Out of Memory Error"):
        return duckdb.OutOfMemoryException(message)
    return duckdb.Error(message)


def _engine_error(exc: duckdb.Error) -> ServingError:
    if isinstance(exc, duckdb.InterruptException):
        return QueryTimeoutError("the query ran past the time limit and was stopped")
    if isinstance(exc, duckdb.PermissionException):
        return ForbiddenQueryError("engine_policy", str(exc))
    if isinstance(exc, duckdb.OutOfMemoryException):
        return ResultTooLargeError(f"the query needs more memory than allowed: {exc}")
    return InvalidQueryError(str(exc))


class QueryRunner:
    """Checks, meters, prices and runs consumer SQL."""

    def __init__(self, store: ServingStore, prices: PriceBook, config: ServingConfig) -> None:
        self.store = store
        self.prices = prices
        self.config = config
        self.watchdog = Watchdog()
        self.shapes: ShapeCache[Plan] = ShapeCache()
        #: metered usage per (snapshot generation, metering SQL): an aggregate or a join over data
        #: that did not change is metered once, not by a second scan each time (LRU, 256 entries)
        self.meters: ShapeCache[list[Usage]] = ShapeCache(256)
        self._items: dict[tuple[str, str, tuple[str, ...]], list[Any]] = {}
        with store.pin() as (cur, _):
            self.sandbox = Sandbox(cur)
            rows = cur.execute("SELECT function_name, stability FROM duckdb_functions()").fetchall()
        unstable = {name.lower() for name, stability in rows if stability != "CONSISTENT"}
        self._stable_functions = frozenset(name.lower() for name, _ in rows) - unstable

    def check(self, sql: str) -> CheckedQuery:
        with self.store.pin() as (cur, _):
            return self.sandbox.check(cur, sql, self.store.columns())

    # -- planning (once per query shape) -------------------------------------------------------
    def _plan(self, cur: duckdb.DuckDBPyConnection, sql: str) -> tuple[Plan, list[str]]:
        """The plan of ``sql`` and its literal values; the sandbox has passed it (or raised)."""
        split = split_literals(sql)
        if split is not None:
            template, values = split
            plan = self.shapes.get(
                (self.store.epoch, template), lambda: self._shape(cur, sql, template, values)
            )
            if plan.shaped:
                return plan, values
        return self._checked(cur, sql), []

    def _shape(self, cur: duckdb.DuckDBPyConnection, sql: str, template: str, values: list[str]) -> Plan:
        columns = self.store.columns()
        real = self.sandbox.check(cur, sql, columns)  # raises for a refused query: nothing is cached
        planned = self.sandbox.check_plan(cur, sql, self.store.base_tables(), real.views)
        try:
            shape = self.sandbox.check(cur, template, columns)
        except ServingError:
            return _UNSHAPED
        if not same_tree(real.ast, shape.ast, values):
            return _UNSHAPED
        plan = self._build(shape, cur, planned)
        for text in (plan.run, plan.meter):
            if text is not None and not renders_cleanly(text, len(values)):
                return _UNSHAPED
        return Plan(
            plan.kind,
            plan.views,
            plan.location,
            plan.run,
            plan.meter,
            True,
            plan.stable_meter,
            plan.own_meter,
        )

    def _checked(self, cur: duckdb.DuckDBPyConnection, sql: str) -> Plan:
        """The plan of a query that is not a cached shape: checked, its bound plan too, built."""
        q = self.sandbox.check(cur, sql, self.store.columns())
        return self._build(q, cur, self.sandbox.check_plan(cur, sql, self.store.base_tables(), q.views))

    def _build(
        self, q: CheckedQuery, cur: duckdb.DuckDBPyConnection, planned: Mapping[str, set[str]] | None = None
    ) -> Plan:
        """What to run and how to meter it, from the resolved query (and the columns its plan reads).

        A location column counts as read if the syntax tree's lineage or the engine's bound
        plan says so: either one is enough to charge the location surcharge.
        """
        read = set(q.reads.get(LOCATION_VIEW, frozenset())) | set((planned or {}).get(LOCATION_VIEW, set()))
        location = bool(read & LOCATION_COLUMNS)
        run: str | None = None
        stable = q.kind == "other"  # a full scan of each view read
        own: tuple[str, str, str] | None = None
        meter: str | None
        if q.kind == "rows":
            assert q.source is not None
            ast = copy.deepcopy(q.ast)
            ast["select_list"] = [*ast["select_list"], *self._meter_items(q.source, cur)]
            metered = self._to_sql(ast, cur)
            meter = self._usage_sql(metered, q.source.view)  # a quote's metering
            own = self._own_meter(q)
            run = None if own else metered
        elif q.kind == "aggregate":
            assert q.source is not None
            # the rows its WHERE lets through: the same FROM item, the same filter (every name in it
            # resolves to a column of the view: Sandbox), metering columns by their resolved names
            ast = copy.deepcopy(q.ast)
            ast.update(
                select_list=self._meter_items(q.source, cur),
                group_expressions=[],
                group_sets=[],
                having=None,
                qualify=None,
                modifiers=[],
                sample=None,
                aggregate_handling="STANDARD_HANDLING",
            )
            meter = self._usage_sql(self._to_sql(ast, cur), q.source.view)
            stable = self._stable(ast.get("where_clause"))
        else:
            parts = [
                f"SELECT '{view}' AS {_VIEW}, * FROM ({self._to_sql(self._scan_ast(view, cur), cur)})"
                for view in sorted(q.views)
            ]
            meter = (
                f"SELECT {_VIEW}, {_SRC}, {_TYPE}, count(*), {self._quality_sum()} "
                f"FROM ({' UNION ALL '.join(parts)}) GROUP BY ALL"
                if parts
                else None
            )
        return Plan(q.kind, q.views, location, run, meter, False, stable, own)

    def _own_meter(self, q: CheckedQuery) -> tuple[str, str, str] | None:
        """The metering columns of a bare ``SELECT *`` over ``vehicle_history``: its own, as returned.

        Only a lone, unqualified ``*`` with no ``EXCLUDE``/``REPLACE``/``RENAME``/``COLUMNS``
        over the view's own column names (no ``AS t(...)`` renaming) qualifies: the result
        then holds each view column once under its own name, so ``source_id``, ``quality``
        and ``event_type`` are exactly what appended metering columns would hold.
        """
        items = q.ast.get("select_list") or []
        source = q.source
        if (
            source is None
            or source.view != LOCATION_VIEW
            or len(items) != 1
            or source.names != source.columns
        ):
            return None
        star = items[0]
        bare = (
            star.get("class") == "STAR"
            and not star.get("relation_name")
            and not star.get("alias")
            and not star.get("columns")
            and star.get("expr") is None
            and not any(
                star.get(k) for k in ("exclude_list", "replace_list", "qualified_exclude_list", "rename_list")
            )
        )
        names = {c for c, _ in self.store.columns().get(source.view, [])}
        return _OWN_METER if bare and names.issuperset(_OWN_METER) else None

    def _stable(self, node: Any) -> bool:
        """True if every function under ``node`` gives the same answer on the same snapshot."""
        if isinstance(node, list):
            return all(self._stable(n) for n in node)
        if not isinstance(node, dict):
            return True
        if node.get("class") in ("FUNCTION", "WINDOW") and (
            str(node.get("function_name", "")).lower() not in self._stable_functions
        ):
            return False
        if node.get("class") == "SUBQUERY":
            return False
        return all(self._stable(v) for v in node.values())

    def _meter_items(self, source: Source, cur: duckdb.DuckDBPyConnection) -> list[Any]:
        """Select-list items naming a row's producer, quality and event type (the category's input).

        Each is the view's own column, qualified by the FROM item and under the name the query's
        ``AS t(...)`` gave it: whatever the consumer renamed, the producer billed is the row's own.
        """
        key = (source.view, source.qualifier, source.names)
        cached = self._items.get(key)
        if cached is None:

            def ref(column: str, default: str) -> str:
                name = source.visible(column)
                if name is None:
                    return default
                return f"{_ident(source.qualifier)}.{_ident(name)}"

            src = ref("source_id", f"'{CONSORTIUM}'")
            quality = ref("quality", "1.0")
            etype = ref("event_type", "NULL::VARCHAR") if source.view == LOCATION_VIEW else "NULL::VARCHAR"
            template = f"SELECT {src} AS {_SRC}, {quality} AS {_Q}, {etype} AS {_TYPE} FROM x"
            doc = json.loads(
                cur.execute("SELECT json_serialize_sql(?::VARCHAR)", [template]).fetchall()[0][0]
            )
            cached = self._items[key] = list(doc["statements"][0]["node"]["select_list"])
        return copy.deepcopy(cached)

    def _scan_ast(self, view: str, cur: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        columns = tuple(c.lower() for c, _ in self.store.columns()[view])
        return {
            "type": "SELECT_NODE", "modifiers": [], "cte_map": {"map": []},
            "select_list": self._meter_items(Source(view, view, columns, columns), cur),
            "from_table": {"type": "BASE_TABLE", "alias": "", "sample": None, "schema_name": "",
                           "table_name": view, "column_name_alias": [], "catalog_name": "",
                           "at_clause": None, "query_location": 0, "query_location_length": 0},
            "where_clause": None, "group_expressions": [], "group_sets": [],
            "aggregate_handling": "STANDARD_HANDLING", "having": None, "sample": None, "qualify": None,
        }  # fmt: skip

    @staticmethod
    def _to_sql(ast: dict[str, Any], cur: duckdb.DuckDBPyConnection) -> str:
        doc = {"error": False, "statements": [{"node": ast, "named_param_map": []}]}
        return str(cur.execute("SELECT json_deserialize_sql(?::JSON)", [json.dumps(doc)]).fetchall()[0][0])

    def _quality_sum(self) -> str:
        # only a quality-weighted price reads the quality: otherwise the sum is not computed
        if self.config.quality_weight_bps == 0:
            return "0"
        return f"CAST(coalesce(sum(round({_Q} * 10000)), 0) AS BIGINT)"

    def _usage_sql(self, inner: str, view: str) -> str:
        return (
            f"SELECT '{view}' AS {_VIEW}, {_SRC}, {_TYPE}, count(*), {self._quality_sum()} "
            f"FROM ({inner}) GROUP BY ALL"
        )

    # -- running -------------------------------------------------------------------------------
    def _timed(
        self, cur: duckdb.DuckDBPyConnection, fn: Callable[[], _T], budget_s: float | None = None
    ) -> _T:
        limit = (
            self.config.query_timeout_s if budget_s is None else min(budget_s, self.config.query_timeout_s)
        )
        try:
            with self.watchdog.limit(limit, cur.interrupt, repeat_s=_INTERRUPT_AGAIN_S):
                return fn()
        except duckdb.InterruptException as exc:
            if budget_s is not None and budget_s < self.config.query_timeout_s:
                raise OverBudget from None
            raise _engine_error(exc) from None
        except duckdb.Error as exc:
            raise _engine_error(exc) from None

    def _meter(
        self, plan: Plan, values: list[str], cur: duckdb.DuckDBPyConnection, budget_s: float | None = None
    ) -> list[Usage]:
        if plan.meter is None:
            return []
        sql = _render(plan, plan.meter, values)

        def scan() -> list[Usage]:
            rows = self._timed(cur, lambda: cur.execute(sql).fetchall(), budget_s)
            return _usages(((v, s, t, n, qs) for v, s, t, n, qs in rows), plan.location)

        if not plan.stable_meter:
            return scan()
        return self.meters.get((self.store.pinned_generation(), plan.location, sql), scan)

    def _quote(self, usage: list[Usage], kind: str, version: str | None) -> Quote:
        return price_usage(
            usage, self.prices.prices(), self.prices.fee_bps(), self.config.quality_weight_bps, kind, version
        )

    # -- public --------------------------------------------------------------------------------
    def quote(self, sql: str) -> tuple[str, Quote]:
        """Price a query without returning its rows (a dry run); returns its metering kind and the quote."""
        with self.store.pin() as (cur, version):
            plan, values = self._plan(cur, sql)
            return plan.kind, self._quote(self._meter(plan, values, cur), plan.kind, version)

    def run(
        self, sql: str, before_return: Callable[[Quote], None] | None = None, budget_s: float | None = None
    ) -> QueryResult:
        """Run a query within the limits and price the rows it used.

        ``before_return`` sees the final price before any row leaves (the payment
        check); if it raises, nothing is returned and nothing is charged.  With
        ``budget_s`` (below the time limit) each engine call is stopped at that
        many seconds and :class:`OverBudget` raised, to be run again elsewhere.
        """
        try:
            with self.store.pin(wait=budget_s is None) as (cur, version):  # StoreBusy only on entering
                plan, values = self._plan(cur, sql)
                run_sql = sql if plan.run is None else _render(plan, plan.run, values)
                table = self._timed(cur, lambda: self._fetch(cur, run_sql), budget_s)
                if plan.kind == "rows" and plan.own_meter is not None:
                    usage = self._usage_from_table(
                        table, next(iter(plan.views)), plan.location, plan.own_meter
                    )
                elif plan.kind == "rows":
                    usage = self._usage_from_table(table, next(iter(plan.views)), plan.location)
                    table = table.drop_columns(_META)
                else:
                    usage = self._meter(plan, values, cur, budget_s)
                quote = self._quote(usage, plan.kind, version)
        except StoreBusy:
            raise OverBudget from None  # new data is being loaded: not worth waiting for here
        if before_return is not None:
            before_return(quote)
        return QueryResult(table, quote, version)

    def _fetch(self, cur: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
        reader = cur.sql(sql).to_arrow_reader(8192)
        batches: list[pa.RecordBatch] = []
        n = 0
        try:
            for batch in reader:
                n += batch.num_rows
                if n > self.config.max_rows:
                    raise ResultTooLargeError(
                        f"the query returns more than {self.config.max_rows} rows; add a LIMIT or aggregate"
                    )
                batches.append(batch)
        except OSError as exc:  # the engine's own error, through Arrow's stream: as DuckDB raises it
            raise _streamed_error(str(exc)) from None
        return pa.Table.from_batches(batches, schema=reader.schema)

    def _usage_from_table(
        self, table: pa.Table, view: str, location: bool, columns: tuple[str, str, str] = (_SRC, _Q, _TYPE)
    ) -> list[Usage]:
        if table.num_rows == 0:
            return []
        src, qual, etype = columns
        weighted = self.config.quality_weight_bps != 0
        if table.num_rows <= _ARROW_GROUP_ROWS and not weighted:  # counted in C (Counter)
            pairs = Counter(zip(table[src].to_pylist(), table[etype].to_pylist(), strict=True))
            return _usages(((view, s, t, n, 0) for (s, t), n in pairs.items()), location)
        if table.num_rows <= _ARROW_GROUP_ROWS:
            counts: dict[tuple[str, Any], list[int]] = {}
            sources, types = table[src].to_pylist(), table[etype].to_pylist()
            qualities = table[qual].to_pylist() if weighted else itertools.repeat(None)
            for s, t, q in zip(sources, types, qualities, strict=False):
                acc = counts.setdefault((s, t), [0, 0])
                acc[0] += 1
                if q is not None:
                    acc[1] += round(float(q) * 10000)
            rows = ((view, s, t, n, qs) for (s, t), (n, qs) in counts.items())
            return _usages(rows, location)
        qbps = pc.round(pc.multiply(table[qual].cast(pa.float64()), 10000.0)) if weighted else None
        t = pa.table(
            {
                "s": table[src],
                "t": table[etype],
                "q": pc.fill_null(qbps, 0.0) if qbps is not None else pa.nulls(table.num_rows, pa.float64()),
            }
        )
        grouped = t.group_by(["s", "t"]).aggregate([([], "count_all"), ("q", "sum")]).to_pylist()
        return _usages(((view, g["s"], g["t"], g["count_all"], g["q_sum"] or 0) for g in grouped), location)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _render(plan: Plan, text: str, values: list[str]) -> str:
    """A plan's SQL with the query's own literals put back (a shape's) or as built (not a shape)."""
    return fill(text, values) if plan.shaped else text


def _usages(rows: Iterable[tuple[Any, Any, Any, Any, Any]], location: bool) -> list[Usage]:
    """Grouped (view, producer, event type, rows, quality sum) as usages per producer and category."""
    merged: dict[tuple[str, str], list[int]] = {}
    for view, source, etype, n, qsum in rows:
        key = (str(source), row_categories(str(view), etype, location))
        acc = merged.setdefault(key, [0, 0])
        acc[0] += int(n)
        acc[1] += int(qsum or 0)
    return [Usage(s, c, n, q) for (s, c), (n, q) in sorted(merged.items())]
