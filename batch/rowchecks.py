"""A suite's row-level checks over an Arrow table: the counts the audit's Spark aggregates give.

The audit (:mod:`batch.audit`) turns a stored suite into one Spark aggregate over a view's
files. For the per-vehicle views of a bucketed version every file is read once for its keys
(:mod:`batch.filekeys`), by the task that wrote it or else by the audit; :func:`arrow_checks`
lets that same read count the suite's row-level expectations too, so the view is not scanned a
second time.

Same suite, same counts (``test_batch_rowchecks.py`` holds the two to each other on generated
tables). Only what both can say identically is counted here; for anything else
:func:`arrow_checks` answers ``None`` and the audit runs the Spark aggregate as before:

* the expectation kinds the audit computes (null, range, set, regular expression, sum);
* a ``row_condition`` that is a boolean column, or ``NOT`` one;
* a regular expression built only of literal characters, character classes of them, anchors,
  groups, alternation and quantifiers (no ``.``, no escape), where Java's and RE2's engines
  agree but for one case: Java's ``$`` also matches before a final line terminator, so RE2 may
  call a value with a trailing newline non-matching where Java matches it.

The audit trusts an Arrow count only when it says nothing failed; a view with any unexpected
row is counted again by Spark, whose numbers are the ones reported. Spark's own ordering is
kept where it differs from IEEE: ``NaN`` is above every number, so it fails a maximum.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: The expectation kinds counted row by row, and those that are sums or come from footers.
ROW_KINDS = (
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_match_regex",
)
FOOTER_KINDS = ("expect_table_row_count_to_equal", "expect_table_row_count_to_be_between")
UNIQUE_KINDS = ("expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique")

_CONDITION = re.compile(r"^\s*(?P<neg>NOT\s+)?(?P<column>[A-Za-z_][A-Za-z0-9_]*)\s*$", re.IGNORECASE)
#: Words Spark reads as values, not columns: a condition of one of them is not a column's.
_SQL_WORDS = frozenset({"TRUE", "FALSE", "NULL", "NOT"})
_LITERAL = r"[A-Za-z0-9_\- ]"
_PORTABLE_REGEX = re.compile(
    rf"^(?:\^|\$|{_LITERAL}|\[(?:{_LITERAL}(?:-{_LITERAL})?)+\]|[(|)]|\{{[0-9]+(?:,[0-9]*)?\}}|[*+?])*$"
)


@dataclass(frozen=True)
class RowCheck:
    """One expectation as Arrow counts, under the alias names of the audit's Spark aggregates."""

    index: int
    kind: str
    column: str | None
    kwargs: dict[str, Any]
    condition: tuple[str, bool] | None  # (boolean column, negated)
    tolerated_reason: str | None


@dataclass(frozen=True)
class RowChecks:
    """A suite's row-level checks; call it on a table to get its partial aggregates (they add up
    over files: :func:`add`)."""

    checks: tuple[RowCheck, ...]
    columns: tuple[str, ...]

    def __call__(self, table: pa.Table) -> dict[str, Any]:
        out: dict[str, Any] = {"_rows": table.num_rows}
        for check in self.checks:
            out.update(_count(check, table))
        return out


def resolve(value: Any, parameters: dict[str, int]) -> Any:
    """A suite's value, or the parameter it names (``{"$PARAMETER": name}``)."""
    if isinstance(value, dict) and "$PARAMETER" in value:
        return parameters[value["$PARAMETER"]]
    return value


def _condition(text: str | None) -> tuple[str, bool] | None:
    """``(column, negated)``, or None for no condition; raises ``ValueError`` for one Arrow does
    not evaluate as Spark does."""
    if not text:
        return None
    found = _CONDITION.match(text)
    if found is None or found["column"].upper() in _SQL_WORDS:
        raise ValueError(text)
    return found["column"], bool(found["neg"])


def arrow_checks(doc: dict[str, Any], parameters: dict[str, int]) -> RowChecks | None:
    """The suite's row-level checks for Arrow, or None when one of them is not portable (see above)."""
    checks: list[RowCheck] = []
    columns: list[str] = []
    for i, exp in enumerate(doc["expectations"]):
        kind = exp["type"]
        kw = dict(exp.get("kwargs", {}))
        if kind in FOOTER_KINDS or kind in UNIQUE_KINDS:
            continue
        if kind not in (*ROW_KINDS, "expect_column_sum_to_be_between"):
            return None
        try:
            condition = _condition(kw.get("row_condition"))
        except ValueError:
            return None
        if kind == "expect_column_values_to_match_regex" and not _PORTABLE_REGEX.match(kw["regex"]):
            return None
        reason = (exp.get("meta") or {}).get("tolerated_reason")
        if kind == "expect_column_sum_to_be_between":
            kw = {"column": kw["column"]}  # the sum is counted; its bounds are the audit's
        try:
            kw = {k: resolve(v, parameters) for k, v in kw.items()}
        except KeyError:  # a bound given by a parameter not known yet (a bucket task's checks)
            return None
        check = RowCheck(i, kind, kw.get("column"), kw, condition, reason)
        checks.append(check)
        for name in (check.column, condition[0] if condition else None, reason):
            if name and name not in columns:
                columns.append(name)
    return RowChecks(tuple(checks), tuple(columns))


def _true(mask: pa.ChunkedArray | pa.Array) -> int | None:
    """Rows where a three-valued mask is true (null counts as not true, as in Spark's ``when``); None
    over no rows, as Spark's ``sum``."""
    if len(mask) == 0:
        return None
    return int(pc.sum(pc.fill_null(mask, False).cast(pa.int64())).as_py() or 0)


def _outside(col: pa.ChunkedArray, kw: dict[str, Any]) -> pa.ChunkedArray:
    lo, hi = kw.get("min_value"), kw.get("max_value")
    out = (
        pa.chunked_array([pa.array(np.zeros(len(col), dtype=bool))])
        if len(col)
        else pa.chunked_array([], pa.bool_())
    )
    if lo is not None:
        out = pc.or_kleene(out, pc.less(col, lo))
    if hi is not None:
        above = pc.greater(col, hi)
        if pa.types.is_floating(col.type):  # Spark orders NaN above every number
            above = pc.or_kleene(above, pc.is_nan(col))
        out = pc.or_kleene(out, above)
    return out


def _count(check: RowCheck, table: pa.Table) -> dict[str, Any]:
    n, i, kw = table.num_rows, check.index, check.kwargs
    where: pa.ChunkedArray | pa.Array = pa.array(np.ones(n, dtype=bool))
    if check.condition is not None:
        name, negated = check.condition
        where = table[name].cast(pa.bool_())
        if negated:
            where = pc.invert(where)
    col = table[check.column] if check.column else None
    if check.kind == "expect_column_sum_to_be_between":
        assert col is not None
        total = pc.sum(col).as_py()
        return {f"_o{i}": None if total is None else int(total)}
    assert col is not None
    if check.kind == "expect_column_values_to_not_be_null":
        bad = pc.is_null(col)
    elif check.kind == "expect_column_values_to_be_between":
        bad = pc.and_kleene(pc.is_valid(col), _outside(col, kw))
    elif check.kind == "expect_column_values_to_be_in_set":
        values = pa.array(list(kw["value_set"]), col.type)
        bad = pc.and_kleene(pc.is_valid(col), pc.invert(pc.is_in(col, value_set=values)))
    else:
        bad = pc.and_kleene(pc.is_valid(col), pc.invert(pc.match_substring_regex(col, kw["regex"])))
    out: dict[str, Any] = {f"_u{i}": _true(pc.and_kleene(where, bad)), f"_n{i}": _true(where)}
    if check.kind == "expect_column_values_to_be_between" and check.condition is not None:
        aside = pc.and_kleene(pc.and_kleene(pc.invert(where), pc.is_valid(col)), _outside(col, kw))
        aside = pc.fill_null(aside, False)
        out[f"_tn{i}"] = _true(aside)
        reasons = table[check.tolerated_reason].filter(aside) if check.tolerated_reason else pa.array([])
        out[f"_t{i}"] = sorted({r for r in reasons.to_pylist() if r is not None})
    return out


def add(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The view's aggregates from its files': counts and sums added, reason sets joined."""
    total: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key.startswith("_t") and not key.startswith("_tn"):
                total[key] = sorted(set(total.get(key) or []) | set(value or []))
            elif value is None:
                total.setdefault(key, None)
            else:
                total[key] = (total.get(key) or 0) + value
    return total
