"""The audit of write-audit-publish: the stored Great Expectations suites, computed as Spark aggregates.

The suites are stored in the repository (``batch/expectations/<view>.json``,
GX 1.x suite JSON).  Their ``$PARAMETER`` values are what the views must
reconcile with, counted independently of the job that wrote them (row counts
from the master dataset's Parquet footers).

Every expectation of a suite is an aggregate: a row count, a count of null,
out-of-range, out-of-set, non-matching or repeated values, a column sum.  The
audit turns a view's whole suite into one ``agg`` over the view's files (one
Spark scan of the suite's columns, nothing collected but one row).  Repeated
values (unique keys) and distinct vehicles are counted file by file where the
files hold whole vehicles (:mod:`batch.filekeys`: no shuffle), else each by an
exact distinct count of its own.  The results go to GX as validation results:
GX keeps the suite format and renders the data docs under
``<batch_dir>/audits/<version>/``.

What is scanned (``files``): the files this run wrote.  A file carried over
from the previous version (a hard link) was audited when it was written, so
the row-level checks cover only the fresh files; the reconciliations (row
counts, column sums, vehicles) cover the whole version, from Parquet footers
and narrow columns.

A suite's expectation may carry a ``row_condition`` (a Spark SQL predicate,
``condition_parser: "spark"``): the check applies to the rows it selects.
``mileage_timeline`` uses it to accept an odometer reading outside the
plausible range when the reconciliation set it aside as an outlier with a
reason (a mistyped digit in a manual entry is data, not a failed run); such
rows are reported as ``tolerated`` with their reasons, not as failures.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.config import VIEWS
from batch.filekeys import FileKeys, file_key_pass, key_repeats, key_rows, merge
from batch.rowchecks import UNIQUE_KINDS, RowChecks, add, arrow_checks, resolve
from batch.session import require_gx
from batch.views.bucket_views import PER_VEHICLE_VIEWS

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

SUITES_DIR = Path(__file__).parent / "expectations"
#: Per view: its unique keys and its row-level checks for Arrow (:func:`file_checks`).
FileChecks = tuple[tuple[str, tuple[tuple[str, ...], ...], RowChecks | None], ...]
#: A file's counts made where it was written: the keys and checks they were made with, and the counts.
Prepared = dict[str, tuple[tuple[tuple[str, ...], ...], RowChecks | None, FileKeys]]
RECONCILING = {
    "expect_table_row_count_to_equal",
    "expect_table_row_count_to_be_between",
    "expect_column_sum_to_be_between",
}


@dataclass
class AuditResult:
    success: bool
    failures: list[str] = field(default_factory=list)
    checked: int = 0
    docs: str | None = None
    tolerated: list[str] = field(default_factory=list)
    scanned: dict[str, int] = field(default_factory=dict)  # view -> files scanned row by row
    parameters: dict[str, int] = field(default_factory=dict)  # what the reconciliations used

    def as_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "failures": self.failures,
            "checked": self.checked,
            "docs": self.docs,
            "tolerated": self.tolerated,
            "scanned": self.scanned,
        }


def load_suite(view: str) -> dict[str, Any]:
    """A stored suite as its JSON document."""
    return json.loads((SUITES_DIR / f"{view}.json").read_text(encoding="utf-8"))


def suite_columns(doc: dict[str, Any]) -> list[str]:
    """The columns a stored suite looks at (what the scan reads)."""
    cols: list[str] = []
    for exp in doc["expectations"]:
        kwargs = exp.get("kwargs", {})
        for c in [kwargs.get("column"), *(kwargs.get("column_list") or [])]:
            if c and c not in cols:
                cols.append(c)
    return cols


@dataclass
class _Check:
    """One expectation as aggregate expressions: ``unexpected`` (rows failing) and ``observed``."""

    index: int
    kind: str
    kwargs: dict[str, Any]
    unexpected: str | None = None  # alias of the unexpected-count aggregate
    observed: str | None = None  # alias of the observed-value aggregate (sums, distinct counts)
    considered: str | None = None  # alias of the rows the check looked at
    tolerated_reason: str | None = None  # the column saying why a row the condition left out is kept
    distinct: Column | None = None  # a distinct count: its own aggregate (see audit_views)


def _outside(col: Column, kw: dict[str, Any]) -> Column:
    """True where ``col`` is beyond ``min_value`` or ``max_value`` (either may be absent)."""
    from pyspark.sql import functions as F

    lo, hi = kw.get("min_value"), kw.get("max_value")
    out = F.lit(False)
    if lo is not None:
        out = out | (col < F.lit(lo))
    if hi is not None:
        out = out | (col > F.lit(hi))
    return out


def _failing_rows(kind: str, col: Column, kw: dict[str, Any]) -> Column | None:
    """The rows failing a row-level expectation, or None for another kind."""
    if kind == "expect_column_values_to_not_be_null":
        return col.isNull()
    if kind == "expect_column_values_to_be_between":
        return col.isNotNull() & _outside(col, kw)
    if kind == "expect_column_values_to_be_in_set":
        return col.isNotNull() & ~col.isin(list(kw["value_set"]))
    if kind == "expect_column_values_to_match_regex":
        return col.isNotNull() & ~col.rlike(kw["regex"])
    return None


def _duplicates(kind: str, col: Column, kw: dict[str, Any]) -> Column:
    """Rows minus distinct values of a column, or of a compound key (rows with a null part left out)."""
    from pyspark.sql import functions as F

    if kind == "expect_column_values_to_be_unique":
        return F.count(col) - F.count_distinct(col)
    cols = [F.col(c) for c in kw["column_list"]]
    key = F.when(F.greatest(*[c.isNull() for c in cols]), None).otherwise(F.struct(*cols))
    return F.count(key) - F.count_distinct(key)


def _aggregates(doc: dict[str, Any], parameters: dict[str, int]) -> tuple[list[_Check], list[Column]]:
    """The suite's expectations as one list of Spark aggregate expressions."""
    from pyspark.sql import functions as F

    checks: list[_Check] = []
    exprs: list[Column] = [F.count(F.lit(1)).alias("_rows")]
    for i, exp in enumerate(doc["expectations"]):
        kind = exp["type"]
        kw = {k: resolve(v, parameters) for k, v in exp.get("kwargs", {}).items()}
        check = _Check(i, kind, kw, tolerated_reason=(exp.get("meta") or {}).get("tolerated_reason"))
        checks.append(check)
        where = F.expr(kw["row_condition"]) if kw.get("row_condition") else F.lit(True)
        col = F.col(kw["column"]) if kw.get("column") else F.lit(None)
        bad = _failing_rows(kind, col, kw)
        if bad is not None:
            check.unexpected, check.considered = f"_u{i}", f"_n{i}"
            exprs.append(F.sum(F.when(where & bad, 1).otherwise(0)).alias(check.unexpected))
            exprs.append(F.sum(F.when(where, 1).otherwise(0)).alias(check.considered))
        elif kind in UNIQUE_KINDS:
            check.unexpected = f"_u{i}"
            check.distinct = _duplicates(kind, col, kw).alias(check.unexpected)
        elif kind == "expect_column_sum_to_be_between":
            check.observed = f"_o{i}"
            exprs.append(F.sum(col).alias(check.observed))
        elif kind not in ("expect_table_row_count_to_equal", "expect_table_row_count_to_be_between"):
            # (row counts come from the Parquet footers of the whole view)
            raise ValueError(f"{doc['name']}: {kind} is not an aggregate expectation the audit computes")
        if kind == "expect_column_values_to_be_between" and kw.get("row_condition"):
            # what the condition set aside beyond the bounds: tolerated, counted with their reasons
            aside = ~where & col.isNotNull() & _outside(col, kw)
            reason = F.col(check.tolerated_reason) if check.tolerated_reason else F.lit(None)
            exprs.append(F.collect_set(F.when(aside, reason)).alias(f"_t{i}"))
            exprs.append(F.sum(F.when(aside, 1).otherwise(0)).alias(f"_tn{i}"))
    return checks, exprs


def file_checks() -> FileChecks:
    """Per per-vehicle view, its suite's unique keys and row-level checks (None where the suite is
    not portable to Arrow, :mod:`batch.rowchecks`): what a bucket task counts over each file it
    writes, so the audit need not read the file again (``prepared`` of :func:`audit_views`)."""
    out = []
    for view in PER_VEHICLE_VIEWS:
        doc = load_suite(view)
        keys = tuple(
            _unique_key(e["type"], e["kwargs"]) for e in doc["expectations"] if e["type"] in UNIQUE_KINDS
        )
        out.append((view, keys, arrow_checks(doc, {})))
    return tuple(out)


def _unique_key(kind: str, kw: dict[str, Any]) -> tuple[str, ...]:
    """The column(s) a uniqueness expectation is about."""
    return (kw["column"],) if kind == "expect_column_values_to_be_unique" else tuple(kw["column_list"])


def _key(check: _Check) -> tuple[str, ...]:
    return _unique_key(check.kind, check.kwargs)


def _footer_rows(files: Sequence[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in files)


def _column_sum(files: Sequence[Path], column: str) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return sum(int(pc.sum(pq.read_table(f, columns=[column])[column]).as_py() or 0) for f in files)


def _evaluate(
    view: str, check: _Check, row: dict[str, Any], total_rows: int, carried_sum: dict[str, int]
) -> tuple[bool, dict[str, Any]]:
    kw, kind = check.kwargs, check.kind
    if kind == "expect_table_row_count_to_equal":
        return total_rows == kw["value"], {"observed_value": total_rows}
    if kind == "expect_table_row_count_to_be_between":
        ok = (kw.get("min_value") is None or total_rows >= kw["min_value"]) and (
            kw.get("max_value") is None or total_rows <= kw["max_value"]
        )
        return ok, {"observed_value": total_rows}
    if kind == "expect_column_sum_to_be_between":
        total = int(row[check.observed] or 0) + carried_sum.get(kw["column"], 0)  # type: ignore[index]
        ok = (kw.get("min_value") is None or total >= kw["min_value"]) and (
            kw.get("max_value") is None or total <= kw["max_value"]
        )
        return ok, {"observed_value": total}
    unexpected = int(row[check.unexpected] or 0)  # type: ignore[index]
    considered = int(row[check.considered] or 0) if check.considered else int(row["_rows"])
    return unexpected == 0, {
        "element_count": considered,
        "unexpected_count": unexpected,
        "unexpected_percent": 100.0 * unexpected / considered if considered else 0.0,
        "missing_count": 0,
        "missing_percent": 0.0,
        "partial_unexpected_list": [],
    }


def _describe(view: str, check: _Check, result: dict[str, Any]) -> str:
    kw = {k: v for k, v in check.kwargs.items() if k not in ("batch_id", "row_condition", "condition_parser")}
    where = kw.get("column") or kw.get("column_list") or ""
    detail = []
    if "observed_value" in result:
        detail.append(f"observed {result['observed_value']}")
    if result.get("unexpected_count"):
        detail.append(f"{result['unexpected_count']} unexpected")
    bounds = {k: v for k, v in kw.items() if k in ("value", "min_value", "max_value", "value_set")}
    col = f" {where}" if where else ""
    return f"{view}: {check.kind}{col} {bounds} ({', '.join(detail) or 'failed'})"


def _spark_rows(
    spark: SparkSession, view: str, scanned: Sequence[Path], frame: DataFrame, exprs: list[Column]
) -> dict[str, Any]:
    """The suite's aggregates over the scanned files: one Spark scan of its columns."""
    spark.sparkContext.setJobDescription(f"pcc batch audit: {view} ({len(scanned)} files)")
    row: dict[str, Any] = frame.agg(*exprs).collect()[0].asDict()
    return row


#: A view with at most this many rows (``source_reputation``: one per producer) and a suite portable
#: to Arrow is read whole by the driver and counted there, not by a Spark job.
SMALL_VIEW_ROWS = 100_000


def _small_view_rows(scanned: Sequence[Path], checks: list[_Check], rows: RowChecks) -> dict[str, Any] | None:
    """The suite's counts over a small view read whole (every key's repeats exactly: all its rows are
    here), or None when a row-level check failed: Spark's own count then says how many."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(f, partitioning=None) for f in scanned])
    row = rows(table)
    if any(row.get(str(c.unexpected)) for c in checks if c.considered):
        return None
    for check in checks:
        if check.distinct is not None:
            row[str(check.unexpected)] = key_repeats(key_rows(table, _key(check)))
    return row


def _scan(
    spark: SparkSession,
    view: str,
    scanned: Sequence[Path],
    columns: list[str],
    exprs: list[Column],
    checks: list[_Check],
    distinct: Column | None,
    rows: RowChecks | None,
    prepared: Prepared,
    *,
    vehicle_files: bool,
) -> dict[str, Any]:
    """The suite's aggregates over the scanned files, its repeated keys and (``distinct``) vehicles.

    Where the files hold whole vehicles, one Spark task per few files reads each file once for its
    keys (:mod:`batch.filekeys`) and, when the suite is portable (``rows``, :mod:`batch.rowchecks`),
    its row-level checks; the view is then scanned by Spark only if those say something failed."""
    if not scanned:
        return {"_rows": 0}
    read: list[DataFrame] = []

    def frame() -> DataFrame:  # the Spark scan, set up only if a count needs it (it lists every file)
        if not read:
            read.append(spark.read.parquet(*[str(f) for f in scanned]).select(*dict.fromkeys(columns)))
        return read[0]

    row: dict[str, Any] | None = None
    unique = [c for c in checks if c.distinct is not None]
    if vehicle_files and view in PER_VEHICLE_VIEWS:
        keys = [_key(c) for c in unique]
        ready = {  # counted by the task that wrote the file, with the same keys and checks
            str(f): prepared[str(f)][2]
            for f in scanned
            if str(f) in prepared and prepared[str(f)][:2] == (tuple(keys), rows)
        }
        rest = [str(f) for f in scanned if str(f) not in ready]
        parts = list(ready.values())
        if rest:
            spark.sparkContext.setJobDescription(f"pcc batch audit: {view} keys and rows, file by file")
            parts += file_key_pass(spark, rest, keys, rows)
        vouched = merge(parts, keys)
        if rows is not None:  # the suite counted in the same read; trusted when nothing failed
            row = add([json.loads(p.rows_checked) for p in parts])
            if any(row.get(str(c.unexpected)) for c in checks if c.considered):
                row = None  # a failure: Spark's own count says how many, in the suite's dialect
        row = row if row is not None else _spark_rows(spark, view, scanned, frame(), exprs)
        row.update({str(c.unexpected): vouched.repeats[_key(c)] for c in unique})
        if distinct is not None and vouched.vehicles is not None:
            row["_vehicles"], distinct = vouched.vehicles, None
    elif rows is not None and _footer_rows(scanned) <= SMALL_VIEW_ROWS:
        row = _small_view_rows(scanned, checks, rows)
        row = row if row is not None else _spark_rows(spark, view, scanned, frame(), exprs)
    else:
        row = _spark_rows(spark, view, scanned, frame(), exprs)
    # what the files cannot vouch for is counted exactly, each count alone: a distinct count beside
    # the other aggregates makes Spark expand every row once per distinct key (63 s against 3.5 s
    # for a count over 282k history rows)
    for check in unique:
        if row.get(check.unexpected or "") is None and check.distinct is not None:
            row.update(frame().agg(check.distinct).collect()[0].asDict())
    if distinct is not None:
        row.update(frame().agg(distinct).collect()[0].asDict())
    return row


def audit_views(
    paths: dict[str, Path],
    parameters: dict[str, int],
    project_dir: Path,
    spark: SparkSession,
    files: dict[str, list[Path]] | None = None,
    *,
    vehicle_files: bool = False,
    prepared: Prepared | None = None,
) -> AuditResult:
    """Validate each written view with its stored suite; build the data docs; say what failed.

    ``files[view]`` lists the files to check row by row (those this run
    wrote); without it, every file of the view.  The reconciliations always
    cover the whole view.  ``vehicle_files``: each file of the per-vehicle
    views holds whole vehicles (the bucketed layout), so their uniqueness
    checks run file by file (:mod:`batch.filekeys`), exactly where the files
    cannot vouch for the answer.  ``parameters`` may leave out ``vehicles``: it is
    then the distinct vehicles of the scanned ``vehicle_history`` files plus
    ``vehicles_carried``. ``prepared``: per file path, its keys and row-level counts made by the
    task that wrote it (the same :func:`batch.filekeys.file_keys` over the file read back, with the
    checks of :func:`file_checks`); those files are not read again.
    """
    gx = require_gx()
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.core.expectation_validation_result import ExpectationValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )
    from pyspark.sql import functions as F

    project_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(project_dir))
    with contextlib.suppress(Exception):  # progress bars are cosmetic; their config shape varies
        context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    params = dict(parameters)
    # an aware UTC time: GX's default is a naive local time it converts, which fails in some zones
    run_time = datetime.now(UTC)
    result = AuditResult(success=True, parameters=params)
    order = sorted((v for v in VIEWS if v in paths), key=lambda v: v != "vehicle_history")
    for view in order:
        every = sorted(paths[view].glob("*.parquet"))
        scanned = every if files is None or view not in files else sorted(files[view])
        carried = [f for f in every if f not in set(scanned)]
        result.scanned[view] = len(scanned)
        doc = load_suite(view)
        suite = context.suites.add_or_update(  # the stored suite, parsed and checked by GX
            gx.ExpectationSuite(name=doc["name"], expectations=doc["expectations"], meta=doc.get("meta"))
        )
        if view == "vehicle_history" and "vehicles" not in params:
            distinct = F.count_distinct("vehicle").alias("_vehicles")
        else:
            distinct = None
        checks, exprs = _aggregates(doc, params)
        columns = suite_columns(doc) + (["vehicle"] if distinct is not None else [])
        for exp in doc["expectations"]:
            if (exp.get("meta") or {}).get("tolerated_reason"):
                columns.append(exp["meta"]["tolerated_reason"])
        portable = arrow_checks(doc, params) if vehicle_files else None
        row = _scan(
            spark,
            view,
            scanned,
            columns,
            exprs,
            checks,
            distinct,
            portable,
            prepared or {},
            vehicle_files=vehicle_files,
        )
        if distinct is not None:
            carried_vehicles = int(params.get("vehicles_carried", 0)) if files is not None else 0
            params["vehicles"] = int(row.get("_vehicles") or 0) + carried_vehicles
        total_rows = _footer_rows(every)
        sums = {
            c["kwargs"]["column"]: _column_sum(carried, c["kwargs"]["column"])
            for c in doc["expectations"]
            if c["type"] == "expect_column_sum_to_be_between" and carried
        }
        results = []
        for check, exp in zip(checks, suite.expectations, strict=True):
            ok, detail = _evaluate(view, check, row, total_rows, sums)
            result.checked += 1
            tolerated = int(row.get(f"_tn{check.index}") or 0)
            if tolerated:
                reasons = sorted(r for r in row.get(f"_t{check.index}") or [] if r)
                result.tolerated.append(
                    f"{view}: {tolerated} {check.kwargs['column']} outside "
                    f"[{check.kwargs.get('min_value')}, {check.kwargs.get('max_value')}] tolerated "
                    f"({check.kwargs['row_condition']} is false: {', '.join(reasons) or 'no reason'})"
                )
            if not ok:
                result.success = False
                result.failures.append(_describe(view, check, detail))
            results.append(
                ExpectationValidationResult(success=ok, expectation_config=exp.configuration, result=detail)
            )
        failed = sum(1 for r in results if not r.success)
        validation = ExpectationSuiteValidationResult(
            success=failed == 0,
            results=results,
            suite_name=doc["name"],
            statistics={
                "evaluated_expectations": len(results),
                "successful_expectations": len(results) - failed,
                "unsuccessful_expectations": failed,
                "success_percent": 100.0 * (len(results) - failed) / max(1, len(results)),
            },
            meta={
                "active_batch_definition": {
                    "datasource_name": "spark_aggregates",
                    "data_connector_name": "version_files",
                    "data_asset_name": view,
                    "batch_identifiers": {"files_scanned": len(scanned), "files_carried": len(carried)},
                },
            },
        )
        key = ValidationResultIdentifier(
            ExpectationSuiteIdentifier(name=doc["name"]),
            RunIdentifier(run_name=project_dir.name, run_time=run_time),
            view,
        )
        context.validation_results_store.set(key, validation)
    context.build_data_docs()
    index = project_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    result.docs = str(index) if index.exists() else None
    return result
