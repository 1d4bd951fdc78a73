"""The one per-vehicle pass every batch view is built from.

``master.groupBy("vehicle").applyInPandas(annotate_vehicle, ANNOTATED_DDL)``
gives each vehicle's whole history, sorted, to :func:`annotate_vehicle`,
which drops replayed duplicates, applies the fraud rules of
``pipelines.rules`` (through :mod:`batch.rules`), reconciles the odometer
curve, and puts the vehicle's fraud verdict on its last row.  The four views
are projections of this one cached result, so Spark's shuffle and the Python
workers are paid once per run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pandas as pd

from batch.rules import RuleEngine, load_engine
from batch.views.mileage import reconcile, source_kind

#: Columns the pass adds to the master dataset's.
ADDED_DDL = (
    "seq int, batch_flags array<string>, flag_evidence string, source_kind string, reconciled_km bigint, "
    "is_outlier boolean, outlier_reason string, "
    "v_score double, v_label string, v_reasons string, v_explanation string, v_duplicates int"
)

#: The rules' order (pipelines.rules.fraud.sort_key): event time, source, log position, id.
_SORT = ["event_time", "source_id", "log_index", "event_id"]
_RULE_COLUMNS = (
    "event_id",
    "event_type",
    "source_id",
    "log_index",
    "odometer_km",
    "lat",
    "lon",
    "verification",
)


def annotated_ddl(master_ddl: str) -> str:
    return f"{master_ddl}, {ADDED_DDL}"


def epoch_ms(times: pd.Series) -> list[int]:
    """Epoch milliseconds of a timestamp column, whatever its unit (Spark gives naive UTC ns)."""
    if times.dt.tz is None:
        times = times.dt.tz_localize("UTC")
    return ((times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).astype("int64").tolist()


def _none(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and value != value) else value


def rule_inputs(pdf: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as the rules read them (event time in epoch milliseconds)."""
    times = epoch_ms(pdf["event_time"])
    cols = {c: pdf[c].tolist() for c in _RULE_COLUMNS}
    flags = [list(f) if f is not None and len(f) else [] for f in pdf["flags"]]
    out = []
    for i, t in enumerate(times):
        row = {c: _none(cols[c][i]) for c in _RULE_COLUMNS}
        row["event_time"] = int(t)
        row["flags"] = flags[i]
        out.append(row)
    return out


def annotate_vehicle(pdf: pd.DataFrame, engine: RuleEngine) -> pd.DataFrame:
    """Annotate one vehicle's events (any order in, the rules' order out)."""
    # a replayed event (same event_id) keeps its first accepted copy
    pdf = pdf.sort_values(["event_id", "processed_time", "offset"], kind="stable")
    deduped = pdf.drop_duplicates("event_id", keep="first")
    duplicates = len(pdf) - len(deduped)
    pdf = deduped.sort_values(_SORT, kind="stable").reset_index(drop=True)
    n = len(pdf)
    verdict = engine.evaluate(rule_inputs(pdf))
    ids = pdf["event_id"].tolist()
    if verdict.order != ids:  # follow the rules' own order if it differs
        pdf = pdf.set_index("event_id", drop=False).loc[verdict.order].reset_index(drop=True)
        ids = verdict.order

    pdf["seq"] = range(1, n + 1)
    pdf["batch_flags"] = [verdict.event_flags.get(e, []) for e in ids]
    pdf["flag_evidence"] = [verdict.event_evidence.get(e) for e in ids]
    pdf["source_kind"] = [source_kind(s) for s in pdf["source_id"]]

    reconciled: list[Any] = [None] * n
    reasons: list[Any] = [None] * n
    has_km = pdf["odometer_km"].notna().to_numpy()
    idx = [i for i in range(n) if has_km[i]]
    if idx:
        times = epoch_ms(pdf["event_time"].iloc[idx])
        km = [int(k) for k in pdf["odometer_km"].iloc[idx]]
        weights = [float(q) for q in pdf["quality"].iloc[idx]]
        result = reconcile(times, km, weights, [ids[i] for i in idx])
        for j, i in enumerate(idx):
            reconciled[i] = result.reconciled_km[j]
            reasons[i] = result.outlier_reason[j]
    pdf["reconciled_km"] = pd.array(reconciled, dtype="Int64")
    pdf["is_outlier"] = [None if not has_km[i] else reasons[i] is not None for i in range(n)]
    pdf["outlier_reason"] = reasons

    last = [i == n - 1 for i in range(n)]
    pdf["v_score"] = [verdict.score if x else None for x in last]
    pdf["v_label"] = [verdict.label if x else None for x in last]
    pdf["v_reasons"] = [
        json.dumps([{"flag": f, "evidence": ev} for f, ev in verdict.reasons]) if x else None for x in last
    ]
    pdf["v_explanation"] = [json.dumps(verdict.explanation) if x else None for x in last]
    pdf["v_duplicates"] = pd.array([duplicates if x else None for x in last], dtype="Int32")
    return pdf


def make_annotator(engine_name: str | None = None) -> Any:
    """The function given to ``applyInPandas``; loads the rule engine once per Python worker."""
    cache: dict[str, RuleEngine] = {}

    def _apply(pdf: pd.DataFrame) -> pd.DataFrame:
        engine = cache.get("engine")
        if engine is None:
            engine = cache["engine"] = load_engine(engine_name)
        return annotate_vehicle(pdf, engine)

    return _apply


def iter_vehicles(pdf: pd.DataFrame) -> Iterator[pd.DataFrame]:
    """Split a local frame by vehicle (for running the pass without Spark, e.g. in a reference)."""
    for _, group in pdf.groupby("vehicle", sort=True):
        yield group
