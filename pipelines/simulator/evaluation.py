"""Fraud quality of the rules against the simulator's ground truth, per kind and per variant, without Spark.

Runs :func:`pipelines.rules.fraud.assess_vehicle` on every vehicle of a
simulated fleet exactly as the batch layer does after the speed layer stored
it (``batch.simulation.master_from_simulation`` then ``batch.rules``):

* every event is ``verified``, its source tier is unknown to the rules;
* ``log_index`` is the event's position in its source's log (ingestion order);
* a replayed event (same ``event_id`` again) is stored once, and the speed
  layer's ``duplicate_event`` flag reaches the rules through ``stream_flags``.

A vehicle is *predicted* as a fraud kind when its label is not ``clean`` and one
of the kind's flags (:data:`KIND_FLAGS`) fired on one of its events.  Beside
the rules, on the same vehicles:

* the **naive baseline**: "the odometer ever goes down" (a verified reading
  more than the rules' tolerance below an earlier one), which names no kind:
  its recall per kind is the share of the kind's cases it flags;
* **detectable** cases only (the simulator's label says whether the data on
  record can show the case at all);
* per **variant** (``dimension=value`` of :data:`pipelines.simulator.variants.VARIANT_FAMILIES`);
  false positives carry no variant, so a variant's precision charges it the
  kind's false positives in proportion to its share of the kind's cases;
* the **speed layer**: for clones and wrecks the batch finds, whether the speed
  layer's per-event rules (events arriving with each source kind's delay, one
  at a time) raised the kind's flag within 3 events of the event on which the
  batch first raised it.

Thresholds that :mod:`pipelines.simulator.tuning` tunes (:class:`Thresholds`) are
applied after the rules ran with permissive ones, from the flags' evidence.

    .venv/bin/python -m pipelines.simulator.evaluation --vehicles 600 --days 365 --seeds 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from pipelines.rules.fraud import (
    DEFAULT_PARAMS,
    EMPTY_STATE,
    EventFields,
    Evidence,
    FraudParams,
    assess_vehicle,
    check_event,
    fields_from,
    fleet_profile,
    fraud_score,
    history_check,
    sort_key,
)
from pipelines.simulator import SimulationConfig, vehicle

#: The flags that reveal each simulated fraud kind (as ``batch/evaluate.py`` counts them).
KIND_FLAGS: dict[str, frozenset[str]] = {
    "rollback_before_sale": frozenset({"rollback_before_sale"}),
    "gradual_clocking": frozenset({"gradual_clocking"}),
    "wreck_back_on_road": frozenset({"activity_after_wreck"}),
    "cloned_identity": frozenset({"impossible_travel", "interleaved_odometers"}),
    "replay": frozenset({"duplicate_event"}),
}
#: Kinds the speed layer must flag in real time (issue target: 90 % within 3 events).
REALTIME_KINDS = ("cloned_identity", "wreck_back_on_road")
REALTIME_EVENTS = 3
#: How long after the event each source kind's events reach the speed layer (ms, min and max).
ARRIVAL_DELAY_MS: dict[str, tuple[int, int]] = {
    "cc-": (0, 15 * 60_000),  # telematics: minutes
    "manual-": (0, 2 * 3_600_000),  # the owner's portal: hours
    "garage-": (2 * 3_600_000, 3 * 86_400_000),  # garages: hours to days
    "insp-": (3_600_000, 2 * 86_400_000),
    "ins-": (86_400_000, 10 * 86_400_000),  # insurers: days
}


class Thresholds(NamedTuple):
    """The tuned thresholds (see :mod:`pipelines.simulator.tuning`)."""

    clocking_ratio: float = DEFAULT_PARAMS.clocking_ratio
    sale_window_days: float = DEFAULT_PARAMS.sale_window_days
    clocking_min_z: float = DEFAULT_PARAMS.clocking_min_z


#: The rules run with these, the tuned thresholds are applied afterwards from the evidence.
PERMISSIVE = replace(DEFAULT_PARAMS, clocking_ratio=0.95, sale_window_days=730, clocking_min_z=0.0)


@dataclass(frozen=True, slots=True)
class Case:
    kind: str
    variant: tuple[tuple[str, str], ...]
    detectable: bool


@dataclass(frozen=True, slots=True)
class VehicleOutcome:
    """One vehicle: its labelled cases, what the rules flagged (with evidence), the naive check, the speed layer."""

    index: int
    cases: tuple[Case, ...]
    flagged: tuple[tuple[tuple[str, ...], Evidence], ...]  # the flagged events' flags and evidence
    naive: bool
    realtime: frozenset[str]  # kinds of REALTIME_KINDS the speed layer flagged in time

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(c.kind for c in self.cases)

    def verdict(self, th: Thresholds | None = None) -> tuple[str, frozenset[str], tuple[str, ...]]:
        """The label, the flags and the score's reasons under the thresholds ``th``."""
        items = self.flagged if th is None else tuple(_under(self.flagged, th))
        score = fraud_score(items)
        return score.label, frozenset(f for flags, _ in items for f in flags), score.reasons

    def predicted(self, kind: str, th: Thresholds | None = None) -> bool:
        label, flags, _ = self.verdict(th)
        return label != "clean" and bool(flags & KIND_FLAGS[kind])


def _under(
    items: Iterable[tuple[tuple[str, ...], Evidence]], th: Thresholds
) -> Iterable[tuple[tuple[str, ...], Evidence]]:
    for flags, evidence in items:
        keep = tuple(
            f
            for f in flags
            if not (
                f == "gradual_clocking"
                and (evidence[f]["ratio"] >= th.clocking_ratio or evidence[f]["z"] < th.clocking_min_z)
            )
            and not (
                f == "rollback_before_sale" and evidence[f]["nearest_days_before_sale"] > th.sale_window_days
            )
        )
        if keep:
            yield keep, evidence


@dataclass(frozen=True, slots=True)
class Tally:
    tp: int
    fp: float  # prorated for a variant
    fn: int

    @property
    def support(self) -> int:
        return self.tp + self.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / self.support if self.support else 0.0

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 0.0


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the report: a kind (``variant == "all"``) or one of its variants."""

    kind: str
    variant: str
    all: Tally
    detectable: Tally
    naive_recall: float
    naive_recall_detectable: float
    flagged_recall: float  # share of the cases labelled anything but clean, whatever the kind named
    realtime: float | None  # share of the batch's finds the speed layer flagged within 3 events

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "variant": self.variant}
        for name, t in (("all", self.all), ("detectable", self.detectable)):
            out[name] = {"cases": t.support, "tp": t.tp, "fp": round(t.fp, 2), "fn": t.fn,
                         "precision": round(t.precision, 4), "recall": round(t.recall, 4), "f1": round(t.f1, 4)}  # fmt: skip
        out.update(
            naive_recall=round(self.naive_recall, 4),
            naive_recall_detectable=round(self.naive_recall_detectable, 4),
            flagged_recall=round(self.flagged_recall, 4),
            realtime=None if self.realtime is None else round(self.realtime, 4),
        )
        return out


def _share(hits: Iterable[bool]) -> float:
    values = list(hits)
    return sum(values) / len(values) if values else 0.0


@dataclass
class FleetQuality:
    vehicles: int = 0
    events: int = 0
    outcomes: list[VehicleOutcome] = field(default_factory=list)
    speed_measured: bool = True  # whether ``realtime`` says what the speed layer did
    cache: dict[tuple[int, Thresholds | None], tuple[str, frozenset[str]]] = field(
        default_factory=dict, repr=False
    )

    def _verdict(self, o: VehicleOutcome, th: Thresholds | None) -> tuple[str, frozenset[str]]:
        key = (id(o), th)
        if key not in self.cache:
            self.cache[key] = o.verdict(th)[:2]
        return self.cache[key]

    def _predicted(self, o: VehicleOutcome, kind: str, th: Thresholds | None) -> bool:
        label, flags = self._verdict(o, th)
        return label != "clean" and bool(flags & KIND_FLAGS[kind])

    def merge(self, other: FleetQuality) -> FleetQuality:
        return FleetQuality(
            self.vehicles + other.vehicles,
            self.events + other.events,
            self.outcomes + other.outcomes,
            self.speed_measured and other.speed_measured,
        )

    @property
    def clean(self) -> list[VehicleOutcome]:
        return [o for o in self.outcomes if not o.cases]

    def clean_false_positives(self, th: Thresholds | None = None) -> list[VehicleOutcome]:
        return [o for o in self.clean if self._verdict(o, th)[0] != "clean"]

    def false_positive_rate(self, th: Thresholds | None = None) -> float:
        return len(self.clean_false_positives(th)) / len(self.clean) if self.clean else 0.0

    @property
    def naive_false_positive_rate(self) -> float:
        return _share(o.naive for o in self.clean)

    def rows(
        self, th: Thresholds | None = None, kinds: Sequence[str] = tuple(KIND_FLAGS), variants: bool = True
    ) -> list[Row]:
        """Per kind, then per variant of the kind (``dimension=value``, sorted)."""
        out = []
        for kind in kinds:
            cases = [(o, c) for o in self.outcomes for c in o.cases if c.kind == kind]
            hit = {id(o): self._predicted(o, kind, th) for o, _ in cases}
            fp = sum(1 for o in self.outcomes if kind not in o.kinds and self._predicted(o, kind, th))
            names = sorted({f"{d}={v}" for _, c in cases for d, v in c.variant}) if variants else []
            for name in ["all", *names]:
                mine = [
                    (o, c) for o, c in cases if name == "all" or name in {f"{d}={v}" for d, v in c.variant}
                ]
                det = [(o, c) for o, c in mine if c.detectable]
                rows_fp = fp * (len(mine) / len(cases)) if cases else float(fp)
                det_fp = fp * (len(det) / len(cases)) if cases else float(fp)
                tp = sum(hit[id(o)] for o, _ in mine)
                tp_d = sum(hit[id(o)] for o, _ in det)
                found = [o for o, _ in mine if hit[id(o)]]
                out.append(
                    Row(
                        kind,
                        name,
                        Tally(tp, rows_fp, len(mine) - tp),
                        Tally(tp_d, det_fp, len(det) - tp_d),
                        _share(o.naive for o, _ in mine),
                        _share(o.naive for o, _ in det),
                        _share(self._verdict(o, th)[0] != "clean" for o, _ in mine),
                        _share(kind in o.realtime for o in found)
                        if kind in REALTIME_KINDS and found and self.speed_measured
                        else None,
                    )
                )
        return out

    def report(self, th: Thresholds | None = None, variants: bool = True) -> str:
        lines = [
            f"{self.vehicles} vehicles, {self.events} events",
            f"  {'kind / variant':40s} {'cases':>5s} {'P':>6s} {'R':>6s} {'F1':>6s} | {'det':>4s} {'P':>6s} "
            f"{'R':>6s} {'F1':>6s} | naive R (det)  | flagged R | speed<=3",
        ]
        for r in self.rows(th, variants=variants):
            name = r.kind if r.variant == "all" else f"    {r.variant}"
            a, d = r.all, r.detectable
            rt = "" if r.realtime is None else f"{r.realtime:.3f}"
            lines.append(
                f"  {name:40s} {a.support:5d} {a.precision:6.3f} {a.recall:6.3f} {a.f1:6.3f} | {d.support:4d} "
                f"{d.precision:6.3f} {d.recall:6.3f} {d.f1:6.3f} | {r.naive_recall:.3f} ({r.naive_recall_detectable:.3f})"
                f"  | {r.flagged_recall:9.3f} | {rt}"
            )
        fps = self.clean_false_positives(th)
        lines.append(
            f"  clean cars labelled not clean: {self.false_positive_rate(th):.2%} ({len(fps)} of {len(self.clean)});"
            f" naive: {self.naive_false_positive_rate:.2%}"
        )
        return "\n".join(lines)


def naive_goes_down(
    events: Iterable[EventFields], tolerance_km: int = DEFAULT_PARAMS.rollback_tolerance_km
) -> bool:
    """The naive baseline: a verified reading more than ``tolerance_km`` below an earlier one."""
    highest = None
    for e in sorted(events, key=sort_key):
        if e.odometer_km is None or not e.verified:
            continue
        if highest is not None and e.odometer_km < highest - tolerance_km:
            return True
        highest = e.odometer_km if highest is None else max(highest, e.odometer_km)
    return False


def _arrival_ms(e: EventFields) -> int:
    lo, hi = next((v for k, v in ARRIVAL_DELAY_MS.items() if e.source_id.startswith(k)), (0, 0))
    u = int.from_bytes(hashlib.blake2b(e.event_id.encode(), digest_size=4).digest(), "big") / 2**32
    return e.event_time_ms + lo + int(u * (hi - lo))


def realtime_kinds(events: Sequence[EventFields], params: FraudParams = DEFAULT_PARAMS) -> frozenset[str]:
    """Kinds of :data:`REALTIME_KINDS` the speed layer flags within 3 events of the fraud becoming visible.

    The speed layer sees the events in arrival order (each source kind's
    delay) and applies them one at a time: an event older than the last one
    applied is late and gets only the rules that stay sound out of order.  The
    fraud is *visible* at the first arrival after which the batch, given the
    events arrived so far, flags the kind.
    """
    arrived = sorted(events, key=lambda e: (_arrival_ms(e), sort_key(e)))
    state, raised = EMPTY_STATE, []
    for e in arrived:
        state, flags, _ = check_event(state, e, params)
        raised.append(set(flags))
    out = set()
    for kind in REALTIME_KINDS:
        at = visible_at(arrived, kind, params)
        if at is not None and any(f & KIND_FLAGS[kind] for f in raised[: at + REALTIME_EVENTS]):
            out.add(kind)
    return frozenset(out)


def visible_at(arrived: Sequence[EventFields], kind: str, params: FraudParams = DEFAULT_PARAMS) -> int | None:
    """The fewest events (in arrival order) from which the batch rules flag ``kind``; None if they never do."""

    def batch_sees(n: int) -> bool:
        return any(set(c.flags) & KIND_FLAGS[kind] for c in history_check(arrived[:n], params))

    if not batch_sees(len(arrived)):
        return None
    lo, hi = 1, len(arrived)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if batch_sees(mid) else (mid + 1, hi)
    return lo


def label_case(label: Mapping[str, Any]) -> Case:
    """A simulator label (``labels.jsonl`` line) as a :class:`Case`."""
    variant = label.get("variant") or {}
    return Case(str(label["kind"]), tuple(sorted((str(k), str(v)) for k, v in variant.items())),
                bool(label.get("detectable", True)))  # fmt: skip


def stored_vehicle(
    config: SimulationConfig, index: int
) -> tuple[list[EventFields], dict[str, list[str]], tuple[Case, ...]]:
    """Vehicle ``index`` as the batch layer stores it: its events, the speed layer's stream flags, its cases."""
    events, labels = vehicle(config, index)
    stored: dict[str, dict[str, object]] = {}
    stream: dict[str, list[str]] = {}
    for event in events:
        event_id = str(event["event_id"])
        if event_id in stored:  # a replay: stored once, flagged by the speed layer
            stream[event_id] = ["duplicate_event"]
        else:
            stored[event_id] = event
    position: Counter[str] = Counter()
    fields = []
    for event in sorted(stored.values(), key=lambda e: (str(e["event_time"]), str(e["event_id"]))):
        source = str(event["source_id"])
        fields.append(fields_from(event, log_index=position[source]))
        position[source] += 1
    cases = tuple(label_case(x) for x in labels if x["kind"] != "noise")
    return fields, stream, cases


def odometer_readings(fields: Iterable[EventFields]) -> list[tuple[int, int]]:
    """A vehicle's verified ``(time ms, km)`` readings: what :func:`fleet_profile` is measured on."""
    return [(e.event_time_ms, e.odometer_km) for e in fields if e.odometer_km is not None and e.verified]


def evaluate_fleet(config: SimulationConfig, params: FraudParams = PERMISSIVE) -> FleetQuality:
    """Assess every vehicle of the fleet ``config`` and compare with its labels.

    As the batch layer, first the fleet's seasonal profile (:func:`fleet_profile`)
    over all vehicles' readings, then every vehicle with it.
    """
    out = FleetQuality()
    stored = [stored_vehicle(config, index) for index in range(config.vehicles)]
    if params.fleet_profile == DEFAULT_PARAMS.fleet_profile:
        params = replace(params, fleet_profile=fleet_profile(odometer_readings(f) for f, _, _ in stored))
    for index, (fields, stream, cases) in enumerate(stored):
        if not fields:  # no event, no row in the master dataset: the batch layer never sees it
            continue
        assessment = assess_vehicle(fields, stream_flags=stream, params=params)
        flagged = tuple((c.flags, c.evidence) for c in assessment.checked if c.flags)
        wanted = any(c.kind in REALTIME_KINDS for c in cases)
        realtime = realtime_kinds(fields, params) if wanted else frozenset()
        out.outcomes.append(VehicleOutcome(index, cases, flagged, naive_goes_down(fields), realtime))
        out.events += len(fields)
        out.vehicles += 1
    return out


def fleet_config(
    seed: int, vehicles: int = 600, days: int = 365, fraud_rate: float = 0.3
) -> SimulationConfig:
    return SimulationConfig(vehicles=vehicles, days=days, seed=seed, fraud_rate=fraud_rate)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--vehicles", type=int, default=600)
    ap.add_argument(
        "--days", type=int, nargs="+", default=[365, 730], help="history spans, each seed once per span"
    )
    ap.add_argument("--fraud-rate", type=float, default=0.3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--kinds-only", action="store_true", help="one line per kind, no variants")
    ap.add_argument("--show-errors", action="store_true", help="list missed and false-positive vehicles")
    args = ap.parse_args(argv)
    th = Thresholds()
    total = FleetQuality()
    for seed, days in ((seed, days) for days in args.days for seed in args.seeds):
        quality = evaluate_fleet(fleet_config(seed, args.vehicles, days, args.fraud_rate))
        print(f"seed {seed}, {days} days: {quality.report(th, variants=not args.kinds_only)}")
        if args.show_errors:
            for o in quality.outcomes:
                label, _, reasons = o.verdict(th)
                wrong = [k for k in KIND_FLAGS if (k in o.kinds) != o.predicted(k, th)]
                if wrong or (not o.cases and label != "clean"):
                    cases = [(c.kind, dict(c.variant), c.detectable) for c in o.cases]
                    print(f"    #{o.index} {cases} {label} {list(reasons)}")
        total = total.merge(quality)
    if len(args.seeds) * len(args.days) > 1:
        print(f"all seeds and spans: {total.report(th, variants=not args.kinds_only)}")


if __name__ == "__main__":
    main()
