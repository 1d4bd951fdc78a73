"""The one per-vehicle pass every batch view is built from, over Arrow data.

Spark range-partitions the master dataset by vehicle and sorts each partition
by vehicle; ``mapInArrow`` then streams each partition's Arrow batches to
:func:`annotate_batches`, which cuts them into chunks of whole vehicles and
hands each chunk to :func:`annotate_table`.  There, per vehicle: replayed
duplicates (same ``event_id``) are dropped, the fraud rules of
``pipelines.rules`` (through :mod:`batch.rules`) are applied to
``EventFields`` built straight from the Arrow columns, the odometer curve is
reconciled, and the vehicle's verdict goes on its last row.  Columns the rules
do not read (payload, proof, ...) are never turned into Python objects: the
chunk is reordered with ``Table.take`` and the new columns are appended.

The four views are projections of this one cached result, so the shuffle and
the Python workers are paid once per run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from itertools import pairwise

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batch.rules import STREAM_ONLY_FLAGS, RuleEngine, VehicleVerdict, load_engine
from batch.views.mileage import reconcile, source_kind
from pipelines.rules.columns import Columns
from pipelines.rules.fraud import EventFields

#: Columns the pass adds to the master dataset's.
ADDED_DDL = (
    "seq int, batch_flags array<string>, flag_evidence string, source_kind string, reconciled_km bigint, "
    "is_outlier boolean, outlier_reason string, "
    "v_score double, v_label string, v_reasons string, v_explanation string, v_duplicates int"
)
ADDED_SCHEMA = pa.schema(
    [
        ("seq", pa.int32()),
        ("batch_flags", pa.list_(pa.string())),
        ("flag_evidence", pa.string()),
        ("source_kind", pa.string()),
        ("reconciled_km", pa.int64()),
        ("is_outlier", pa.bool_()),
        ("outlier_reason", pa.string()),
        ("v_score", pa.float64()),
        ("v_label", pa.string()),
        ("v_reasons", pa.string()),
        ("v_explanation", pa.string()),
        ("v_duplicates", pa.int32()),
    ]
)

#: A replay keeps its first accepted copy: the earliest processed, then the lowest offset.
_FIRST_COPY = [("vehicle", "ascending"), ("event_id", "ascending"), ("processed_time", "ascending"), ("offset", "ascending")]  # fmt: skip
#: The rules' order (pipelines.rules.fraud.sort_key): event time, source, log position, id.
_RULE_ORDER = [("vehicle", "ascending"), ("event_time", "ascending"), ("source_id", "ascending"), ("log_index", "ascending"), ("event_id", "ascending")]  # fmt: skip
#: Rows per chunk handed to :func:`annotate_table` (whole vehicles, so a chunk may be larger).
CHUNK_ROWS = 50_000
#: Rows per Arrow batch handed back to Spark (a wide row is ~1 kB: the JVM reads ~10 MB at a time).
OUT_ROWS = 10_000


def epoch_ms(times: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Epoch milliseconds of a timestamp column, whatever its unit."""
    unit = times.type.unit
    raw = times.cast(pa.int64()).to_numpy(zero_copy_only=False)
    per_ms = {"s": None, "ms": 1, "us": 1_000, "ns": 1_000_000}[unit]
    return raw * 1000 if per_ms is None else raw // per_ms


def _runs(values: pa.ChunkedArray | pa.Array) -> list[int]:
    """Start index of each run of equal values, plus the length (so ``starts[i]:starts[i+1]``)."""
    n = len(values)
    if n == 0:
        return [0]
    change = pc.not_equal(values.slice(1), values.slice(0, n - 1))
    inner = (np.flatnonzero(change.to_numpy(zero_copy_only=False)) + 1).tolist()
    return [0, *inner, n]


def _deduplicated(table: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """The table without replayed copies, and the number of copies dropped per vehicle."""
    order = pc.sort_indices(table, sort_keys=_FIRST_COPY)
    keys = table.select(["vehicle", "event_id"]).take(order)
    n = keys.num_rows
    if n < 2:
        return table, {}
    same_id = pc.equal(keys["event_id"].slice(1), keys["event_id"].slice(0, n - 1))
    same_vehicle = pc.equal(keys["vehicle"].slice(1), keys["vehicle"].slice(0, n - 1))
    repeat = np.flatnonzero(pc.and_(same_id, same_vehicle).to_numpy(zero_copy_only=False)) + 1
    if len(repeat) == 0:
        return table, {}
    dropped = order.to_numpy()[repeat]
    counts: dict[str, int] = {}
    for v in keys["vehicle"].take(pa.array(repeat)).to_pylist():
        counts[v] = counts.get(v, 0) + 1
    keep = np.ones(table.num_rows, dtype=bool)
    keep[dropped] = False
    return table.filter(pa.array(keep)), counts


def event_fields(table: pa.Table) -> list[EventFields]:
    """The rules' ``EventFields`` of every row, built from whole columns (no dict per event)."""
    odo = table["odometer_km"].to_pylist()
    lat = table["lat"].to_pylist()
    lon = table["lon"].to_pylist()
    verified = pc.equal(table["verification"], "verified").to_pylist()
    return [
        EventFields(e, t, m, s, li, o, la, lo, bool(v))
        for e, t, m, s, li, o, la, lo, v in zip(
            table["event_id"].to_pylist(),
            table["event_type"].to_pylist(),
            epoch_ms(table["event_time"]).tolist(),
            table["source_id"].to_pylist(),
            table["log_index"].to_pylist(),
            odo,
            lat,
            lon,
            verified,
            strict=True,
        )
    ]


def _columns(table: pa.Table) -> Columns:
    """The rules' columns of a whole chunk (sliced per vehicle by :func:`_slice`); ids are unique per
    vehicle once replays are dropped, so an event's position is its id code."""
    kinds = pc.add(
        pc.multiply(
            pc.cast(pc.equal(table["event_type"], "wreck_declaration"), pa.int8()), pa.scalar(1, pa.int8())
        ),
        pc.add(
            pc.multiply(
                pc.cast(pc.equal(table["event_type"], "ownership_change"), pa.int8()), pa.scalar(2, pa.int8())
            ),
            pc.multiply(
                pc.cast(pc.equal(table["event_type"], "odometer_reading"), pa.int8()), pa.scalar(3, pa.int8())
            ),
        ),
    )
    return Columns(
        table["event_id"].to_pylist(),
        np.arange(table.num_rows, dtype=np.int64),
        epoch_ms(table["event_time"]).astype(np.int64),
        pc.fill_null(table["odometer_km"], 0).cast(pa.int64()).to_numpy(),
        pc.is_valid(table["odometer_km"]).to_numpy(zero_copy_only=False),
        pc.fill_null(table["lat"].cast(pa.float64()), float("nan")).to_numpy(),
        pc.fill_null(table["lon"].cast(pa.float64()), float("nan")).to_numpy(),
        pc.fill_null(pc.equal(table["verification"], "verified"), False).to_numpy(zero_copy_only=False),
        pc.fill_null(kinds, 0).to_numpy(zero_copy_only=False),
    )


def _slice(c: Columns, a: int, b: int) -> Columns:
    return Columns(
        c.ids[a:b], c.codes[: b - a], c.t[a:b], c.km[a:b], c.has_km[a:b], c.lat[a:b], c.lon[a:b],
        c.verified[a:b], c.kind[a:b],
    )  # fmt: skip


def _stream_flags(table: pa.Table) -> dict[str, list[str]]:
    """event id -> stream-only flags, for the (few) rows whose ``flags`` are not empty.

    ``flags`` is a list column, or its JSON text (as the Spark pass sends it).
    """
    column = table["flags"]
    if pa.types.is_string(column.type):
        empty = pc.or_kleene(pc.is_null(column), pc.equal(column, "[]"))
        flagged = np.flatnonzero(~empty.to_numpy(zero_copy_only=False))
        column = pa.array(
            [json.loads(x) for x in column.take(pa.array(flagged)).to_pylist()], pa.list_(pa.string())
        )
        table = table.take(pa.array(flagged)).set_column(
            table.schema.get_field_index("flags"), "flags", column
        )
        flagged = np.arange(len(flagged))
    else:
        flagged = np.flatnonzero(pc.fill_null(pc.list_value_length(column), 0).to_numpy() > 0)
    if len(flagged) == 0:
        return {}
    idx = pa.array(flagged)
    out = {}
    for eid, flags in zip(
        table["event_id"].take(idx).to_pylist(), table["flags"].take(idx).to_pylist(), strict=True
    ):
        keep = [f for f in flags or () if f in STREAM_ONLY_FLAGS]
        if keep:
            out[eid] = keep
    return out


def _source_kinds(source_ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Each row's source kind, looked up once per distinct producer."""
    encoded = pc.dictionary_encode(source_ids).combine_chunks()
    kinds = pa.array([source_kind(s) for s in encoded.dictionary.to_pylist()], pa.string())
    return kinds.take(encoded.indices)


def _sparse(n: int, values: dict[int, object], type_: pa.DataType) -> pa.Array:
    """A column of ``n`` nulls but at ``values``' positions."""
    column: list[object] = [None] * n
    for i, v in values.items():
        column[i] = v
    return pa.array(column, type=type_)


def _flag_lists(n: int, flags: dict[int, list[str]]) -> pa.Array:
    """``batch_flags``: an empty list on every row but the flagged ones (built from offsets)."""
    lengths = np.zeros(n + 1, dtype=np.int32)
    values: list[str] = []
    for i in sorted(flags):
        lengths[i + 1] = len(flags[i])
        values.extend(flags[i])
    return pa.ListArray.from_arrays(
        pa.array(np.cumsum(lengths, dtype=np.int32)), pa.array(values, pa.string())
    )


def _reconciled(table: pa.Table, starts: list[int]) -> tuple[pa.Array, pa.Array, pa.Array]:
    """``reconciled_km``, ``is_outlier`` and ``outlier_reason`` of whole vehicles (rows in output order).

    A vehicle whose readings already form one non-decreasing chain in strictly increasing time
    (nearly every car) keeps them as they are, found for all vehicles at once; only the others go
    through :func:`batch.views.mileage.reconcile`."""
    n = table.num_rows
    valid = pc.is_valid(table["odometer_km"]).to_numpy(zero_copy_only=False)
    km = pc.fill_null(table["odometer_km"], 0).cast(pa.int64()).to_numpy()
    t = epoch_ms(table["event_time"]).astype(np.int64)
    vehicle = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    rows = np.flatnonzero(valid)
    same = vehicle[rows[1:]] == vehicle[rows[:-1]]
    broken = same & ((km[rows[1:]] < km[rows[:-1]]) | (t[rows[1:]] <= t[rows[:-1]]))
    redo = np.unique(vehicle[rows[1:][broken]])
    reconciled = km.copy()
    outlier = np.zeros(n, dtype=bool)
    reasons: dict[int, object] = {}
    if len(redo):
        quality = table["quality"].to_numpy()
        ids = table["event_id"]
        for v in redo.tolist():
            a, b = starts[v], starts[v + 1]
            with_km = a + np.flatnonzero(valid[a:b])
            result = reconcile(
                t[with_km].tolist(),
                km[with_km].tolist(),
                [float(q) for q in quality[with_km]],
                ids.take(pa.array(with_km)).to_pylist(),
            )
            reconciled[with_km] = result.reconciled_km
            for j, reason in zip(with_km.tolist(), result.outlier_reason, strict=True):
                if reason is not None:
                    outlier[j] = True
                    reasons[j] = reason
    missing = ~valid
    return (
        pa.array(reconciled, pa.int64(), mask=missing),
        pa.array(outlier, pa.bool_(), mask=missing),
        _sparse(n, reasons, pa.string()),
    )


def annotate_table(table: pa.Table, engine: RuleEngine) -> pa.Table:
    """Annotate whole vehicles (any row order in; vehicle then the rules' order out).

    Python runs once per vehicle (its verdict) and once per flagged or reconciled event; the
    columns of every other row are built by Arrow and numpy."""
    table, duplicates = _deduplicated(table)
    table = table.take(pc.sort_indices(table, sort_keys=_RULE_ORDER))
    n = table.num_rows
    compiled = getattr(engine, "evaluate_columns", None)
    cols = _columns(table) if compiled is not None else None
    fields = event_fields(table) if cols is None else None
    stream = _stream_flags(table)
    in_stream = (
        np.flatnonzero(
            pc.is_in(table["event_id"], value_set=pa.array(list(stream), pa.string())).to_numpy(
                zero_copy_only=False
            )
        )
        if stream
        else np.zeros(0, dtype=np.int64)
    )
    vehicles = table["vehicle"]
    starts = _runs(vehicles)

    order = np.arange(n)
    flags: dict[int, list[str]] = {}
    evidence: dict[int, object] = {}
    verdicts: dict[int, VehicleVerdict] = {}
    for a, b in pairwise(starts):
        lo, hi = np.searchsorted(in_stream, [a, b])
        seen = None
        if hi > lo:
            ids_of = table["event_id"].take(pa.array(in_stream[lo:hi])).to_pylist()
            seen = {e: stream[e] for e in ids_of}
        if cols is not None and compiled is not None:
            # the compiled rules over the vehicle's columns, already in the rules' order
            vehicle = _slice(cols, a, b)
            ids = vehicle.ids
            verdict = compiled(vehicle, seen)
        else:
            assert fields is not None
            chunk = fields[a:b]
            ids = [f.event_id for f in chunk]
            verdict = engine.evaluate(chunk, seen)
            if verdict.order != ids:  # follow the rules' own order if it differs
                pos = {e: i for i, e in enumerate(ids)}
                order[a:b] = order[a:b][[pos[e] for e in verdict.order]]
                ids = verdict.order
        if verdict.event_flags or verdict.event_evidence:
            position = {e: a + k for k, e in enumerate(ids)}
            for eid, f in verdict.event_flags.items():
                flags[position[eid]] = f
            for eid, ev in verdict.event_evidence.items():
                evidence[position[eid]] = ev
        verdicts[b - 1] = verdict
    if not np.array_equal(order, np.arange(n)):
        table = table.take(pa.array(order))
    seq = (
        np.arange(n, dtype=np.int32) - np.repeat(np.asarray(starts[:-1], dtype=np.int32), np.diff(starts)) + 1
    )
    reconciled, is_outlier, reasons = _reconciled(table, starts)
    first = {b - 1: a for a, b in pairwise(starts)}
    added = [
        pa.array(seq, pa.int32()),
        _flag_lists(n, flags),
        _sparse(n, evidence, pa.string()),
        _source_kinds(table["source_id"]),
        reconciled,
        is_outlier,
        reasons,
        _sparse(n, {i: v.score for i, v in verdicts.items()}, pa.float64()),
        _sparse(n, {i: v.label for i, v in verdicts.items()}, pa.string()),
        _sparse(
            n,
            {
                i: json.dumps([{"flag": f, "evidence": ev} for f, ev in v.reasons])
                for i, v in verdicts.items()
            },
            pa.string(),
        ),
        _sparse(n, {i: json.dumps(v.explanation) for i, v in verdicts.items()}, pa.string()),
        _sparse(
            n,
            {i: duplicates.get(vehicles[first[i]].as_py(), 0) if duplicates else 0 for i in verdicts},
            pa.int32(),
        ),
    ]
    for f, column in zip(ADDED_SCHEMA, added, strict=True):
        table = table.append_column(f, column)
    return table


def annotate_batches(
    batches: Iterable[pa.RecordBatch], engine: RuleEngine, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pa.RecordBatch]:
    """Annotate a stream of batches sorted (at least clustered) by vehicle, whole vehicles at a time."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        rows += batch.num_rows
        if rows < chunk_rows:
            continue
        table = pa.Table.from_batches(pending)
        vehicles = table["vehicle"]
        # the last vehicle may go on in the next batch: keep its rows for the next chunk
        cut = _runs(vehicles)[-2]
        if cut == 0:
            continue  # one vehicle so far: wait for more
        yield from annotate_table(table.slice(0, cut), engine).to_batches(max_chunksize=OUT_ROWS)
        rest = table.slice(cut)
        pending, rows = rest.to_batches(), rest.num_rows
    if pending:
        yield from annotate_table(pa.Table.from_batches(pending), engine).to_batches(max_chunksize=OUT_ROWS)


def make_annotator(
    fleet_profile: tuple[float, ...] | None = None,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function given to ``mapInArrow``; loads the rule engine once per Python worker."""
    cache: dict[str, RuleEngine] = {}

    def _apply(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        engine = cache.get("engine")
        if engine is None:
            engine = cache["engine"] = load_engine(fleet_profile=fleet_profile)
        yield from annotate_batches(batches, engine)

    return _apply


def annotate_vehicle(pdf: pd.DataFrame, engine: RuleEngine) -> pd.DataFrame:
    """Annotate one vehicle's events given as a pandas frame (tests, notebooks; no Spark)."""
    return annotate_table(pa.Table.from_pandas(pdf, preserve_index=False), engine).to_pandas()


PROFILE_SCHEMA = "part int, km double, days double"


def profile_table_sums(table: pa.Table) -> tuple[list[float], list[float]]:
    """The fleet-profile sums (:func:`pipelines.rules.fraud.profile_sums`) of whole vehicles'
    verified readings (``vehicle, event_time, odometer_km`` rows, any order), added up vehicle by vehicle
    in vehicle order, so that the same vehicles always give the same floating-point sums (compiled:
    :func:`pipelines.rules.kernels.profile_columns`)."""
    km, days = [0.0] * 12, [0.0] * 12
    if not table.num_rows:
        return km, days
    order = [("vehicle", "ascending"), ("event_time", "ascending"), ("odometer_km", "ascending")]
    table = table.take(pc.sort_indices(table, sort_keys=order))  # each car's readings as sorted() has them
    starts = _runs(table["vehicle"])
    try:
        from pipelines.rules.kernels import profile_columns
    except ImportError:  # numba missing (the spark extra not installed): the Python rule, car by car
        from pipelines.rules.fraud import profile_sums

        times, odo = epoch_ms(table["event_time"]).tolist(), table["odometer_km"].to_pylist()
        for a, b in pairwise(starts):
            k, d = profile_sums(list(zip(times[a:b], odo[a:b], strict=True)))
            km = [x + y for x, y in zip(km, k, strict=True)]
            days = [x + y for x, y in zip(days, d, strict=True)]
        return km, days
    odo = table["odometer_km"].to_numpy(zero_copy_only=False)
    return profile_columns(epoch_ms(table["event_time"]), odo, np.asarray(starts))


def profile_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """A vehicle range's share of the fleet's profile (``vehicle, event_time, odometer_km`` rows in):
    :func:`profile_table_sums`, one row per twelfth."""
    received = [b for b in batches if b.num_rows]
    km, days = profile_table_sums(pa.Table.from_batches(received)) if received else ([0.0] * 12, [0.0] * 12)
    yield pa.RecordBatch.from_pydict(
        {
            "part": pa.array(range(12), pa.int32()),
            "km": pa.array(km, pa.float64()),
            "days": pa.array(days, pa.float64()),
        }
    )


def warm_rules() -> float:
    """Compile the rules' kernels (and store them in numba's cache) by annotating one made-up car and
    measuring its share of the fleet profile; returns the seconds it took. A process that runs it before the batch pass (the demo, while the
    stream runs) spares the pass's Python workers the compile: they load the cached code."""
    import time

    from batch.simulation import event_row, pseudonym
    from pipelines.dataset import MASTER_SCHEMA

    t0 = time.perf_counter()
    car = pseudonym("WARMUP0000000000")
    rows = [
        event_row(car, "odometer_reading", f"2026-0{m}-01T08:00:00Z", odometer_km=km, lat=48.1, lon=11.5)
        for m, km in ((1, 10_000), (2, 11_200), (3, 9_000), (4, 13_500))
    ]
    table = pa.Table.from_pylist(rows, schema=MASTER_SCHEMA)
    annotate_table(table, load_engine())
    profile_table_sums(table.select(["vehicle", "event_time", "odometer_km"]))
    return time.perf_counter() - t0


if __name__ == "__main__":  # python -m batch.views.annotate: compile the rules' kernels into the cache
    print(f"rules compiled in {warm_rules():.1f} s")
