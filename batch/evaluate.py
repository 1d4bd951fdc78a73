"""Fraud quality: ``fraud_scores`` against the simulator's ground-truth labels, per kind and per variant.

A vehicle is *predicted* as a fraud kind when its label is not ``clean`` and
one of the kind's flags fired on it (:data:`pipelines.simulator.evaluation.KIND_FLAGS`).
Per kind and per variant of the kind (the labels' ``variant``): precision,
recall and F1 over all cases and over the cases the data can show
(``detectable``), the naive "odometer ever goes down" baseline on the same
published histories, and for clones and wrecks the share the speed layer
flagged (the ``flags`` it raised, in the order it processed the events) within
3 events of the batch being able to see them.  For clean cars (no fraud label;
honest typos included): the share labelled anything but ``clean``.  Counted
exactly as ``pipelines.simulator.evaluation`` counts the simulator's fleets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from batch.config import BatchConfig
from batch.errors import RunNotFoundError
from batch.publish import read_current
from batch.simulation import pseudonym, simulation_label_rows
from pipelines.rules.fraud import fields_from
from pipelines.simulator.evaluation import (
    KIND_FLAGS,
    REALTIME_EVENTS,
    REALTIME_KINDS,
    Case,
    FleetQuality,
    label_case,
    naive_goes_down,
    visible_at,
)


@dataclass
class KindQuality:
    kind: str
    support: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    naive_recall: float = 0.0  # the "odometer ever goes down" check's share of these cases
    detectable: int = 0  # cases the data can show ...
    detectable_recall: float = 0.0
    detectable_f1: float = 0.0  # ... and the rules' recall and F1 over them
    realtime: float | None = None  # share of the finds the speed layer flagged within 3 events


@dataclass
class Evaluation:
    vehicles: int
    clean_vehicles: int
    clean_false_positives: int
    false_positive_rate: float
    kinds: list[KindQuality]
    naive_false_positive_rate: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)  # per kind and per variant (Row.as_dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PublishedOutcome:
    """One published vehicle as :class:`pipelines.simulator.evaluation.FleetQuality` counts it."""

    index: str
    cases: tuple[Case, ...]
    label: str
    flags: frozenset[str]
    naive: bool = False
    realtime: frozenset[str] = frozenset()

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(c.kind for c in self.cases)

    def verdict(self, th: object = None) -> tuple[str, frozenset[str], tuple[str, ...]]:
        return self.label, self.flags, ()

    def predicted(self, kind: str, th: object = None) -> bool:
        return self.label != "clean" and bool(self.flags & KIND_FLAGS[kind])


def _cases(value: Iterable[str] | Iterable[Case]) -> tuple[Case, ...]:
    return tuple(c if isinstance(c, Case) else Case(c, (), True) for c in value)


def evaluate(
    scores: Mapping[str, tuple[str, set[str]]],
    truth: Mapping[str, Iterable[str] | Iterable[Case]],
    naive: Mapping[str, bool] | None = None,
    realtime: Mapping[str, frozenset[str]] | None = None,
) -> Evaluation:
    """``scores``: vehicle -> (label, flags); ``truth``: vehicle -> its fraud kinds or :class:`Case` s.

    ``naive``: vehicle -> whether its odometer ever goes down; ``realtime``:
    vehicle -> the kinds the speed layer flagged in time.
    """
    q = FleetQuality(speed_measured=realtime is not None)
    for v in sorted(set(scores) | set(truth)):
        label, flags = scores.get(v, ("clean", set()))
        q.outcomes.append(
            PublishedOutcome(  # type: ignore[arg-type]
                v,
                _cases(truth.get(v, ())),
                label,
                frozenset(flags),
                (naive or {}).get(v, False),
                (realtime or {}).get(v, frozenset()),
            )
        )
    rows = q.rows()
    kinds = []
    for r in (r for r in rows if r.variant == "all"):
        a, d = r.all, r.detectable
        kinds.append(
            KindQuality(
                r.kind,
                a.support,
                a.tp,
                round(a.fp),
                a.fn,
                round(a.precision, 4),
                round(a.recall, 4),
                round(a.f1, 4),
                round(r.naive_recall, 4),
                d.support,
                round(d.recall, 4),
                round(d.f1, 4),
                None if r.realtime is None else round(r.realtime, 4),
            )
        )
    clean = q.clean
    fps = len(q.clean_false_positives())
    return Evaluation(
        len(q.outcomes), len(clean), fps, round(q.false_positive_rate(), 4), kinds,
        round(q.naive_false_positive_rate, 4), [r.as_dict() for r in rows],
    )  # fmt: skip


def simulation_cases(
    sim_dir: Path, vehicle_of: Callable[[str], str | None] = pseudonym
) -> dict[str, list[Case]]:
    """Ground truth: vehicle pseudonym -> its fraud cases with variant and detectability (``noise`` excluded)."""
    truth: dict[str, list[Case]] = {}
    for vehicle, label in simulation_label_rows(sim_dir, vehicle_of):
        cases = truth.setdefault(vehicle, [])
        if label["kind"] != "noise":
            cases.append(label_case(label))
    return truth


def history_signals(
    path: Path, vehicles: set[str], scores: Mapping[str, tuple[str, set[str]]]
) -> tuple[dict[str, bool], dict[str, frozenset[str]]]:
    """From the published ``vehicle_history``: the naive check per vehicle, and the speed layer's timing.

    For each vehicle with flags of :data:`REALTIME_KINDS`: the events in the
    order the speed layer processed them (``processed_time``, then the rules'
    order), the first prefix in which the batch rules flag the kind
    (:func:`pipelines.simulator.evaluation.visible_at`), and whether the speed
    layer's own ``flags`` raised it on one of that prefix's events or the 3 after.
    """
    columns = ["vehicle", "seq", "event_id", "event_type", "event_time", "processed_time", "source_id",
               "log_index", "odometer_km", "lat", "lon", "verification", "flags"]  # fmt: skip
    table = pq.read_table(sorted(path.glob("*.parquet")), columns=columns)
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        rows.setdefault(row["vehicle"], []).append(row)
    naive: dict[str, bool] = {}
    realtime: dict[str, frozenset[str]] = {}
    for v, history in rows.items():
        history.sort(key=lambda r: r["seq"])
        events = [fields_from(r) for r in history]
        naive[v] = naive_goes_down(events)
        fired = scores.get(v, ("clean", set()))[1]
        wanted = [k for k in REALTIME_KINDS if fired & KIND_FLAGS[k]]
        if v not in vehicles or not wanted:
            continue
        order = sorted(range(len(history)), key=lambda i: (history[i]["processed_time"], history[i]["seq"]))
        arrived = [events[i] for i in order]
        speed = [set(history[i]["flags"] or ()) for i in order]
        hits = set()
        for kind in wanted:
            at = visible_at(arrived, kind)
            if at is not None and any(f & KIND_FLAGS[kind] for f in speed[: at + REALTIME_EVENTS]):
                hits.add(kind)
        realtime[v] = frozenset(hits)
    return naive, realtime


def read_scores(path: Path) -> dict[str, tuple[str, set[str]]]:
    table = pq.read_table(sorted(path.glob("*.parquet")), columns=["vehicle", "label", "flags"])
    return {
        v: (label, set(flags or ()))
        for v, label, flags in zip(
            *(table.column(c).to_pylist() for c in ("vehicle", "label", "flags")), strict=True
        )
    }


def evaluate_published(
    config: BatchConfig,
    sim_dir: Path,
    vehicle_of: Callable[[str], str | None] | None = None,
    speed: bool = True,
) -> Evaluation:
    """Evaluate the published ``fraud_scores`` against ``sim_dir/labels.jsonl``.

    ``vehicle_of`` maps a label's VIN to the views' pseudonym (see
    :func:`batch.simulation.simulation_labels`); by default the stand-in of
    ``pcc batch load-simulation``.  ``speed``: the master dataset came through the
    speed layer, whose real-time flags are measured (not for ``load-simulation``'s stand-in).
    """
    current = read_current(config)
    if current is None:
        raise RunNotFoundError(f"no batch version is published under {config.batch_dir}; run `pcc batch run`")
    if not (sim_dir / "labels.jsonl").exists():
        raise RunNotFoundError(
            f"{sim_dir / 'labels.jsonl'} does not exist (a `pcc simulate --out` directory?)"
        )
    truth = simulation_cases(sim_dir, vehicle_of) if vehicle_of else simulation_cases(sim_dir)
    views = current.view_dirs(config.batch_dir)
    scores = read_scores(views["fraud_scores"])
    wanted = set(truth) if speed else set()
    naive, realtime = history_signals(views["vehicle_history"], wanted, scores)
    return evaluate(scores, truth, naive, realtime if speed else None)
