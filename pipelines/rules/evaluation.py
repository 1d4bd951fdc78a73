"""Fraud quality of the rules against the simulator's ground truth, without Spark.

Runs :func:`pipelines.rules.fraud.assess_vehicle` on every vehicle of a
simulated fleet exactly as the batch layer does after the speed layer stored
it (``batch.testing.master_from_simulation`` then ``batch.rules``):

* every event is ``verified``, its source tier is unknown to the rules;
* ``log_index`` is the event's position in its source's log (ingestion order);
* a replayed event (same ``event_id`` again) is stored once, and the speed
  layer's ``duplicate_event`` flag reaches the rules through ``stream_flags``.

It counts like ``batch/evaluate.py`` so the figures agree with the batch bench:
a vehicle is *predicted* as a fraud kind when its label is not ``clean`` and
one of the kind's flags (:data:`KIND_FLAGS`) fired on one of its events; per
kind precision, recall and F1 over the fleet; for clean cars (no fraud label,
honest typos included) the share labelled anything but ``clean``.

    .venv/bin/python -m pipelines.rules.evaluation --vehicles 1000 --days 365 --seeds 1 2 3 4 5
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pipelines.rules.fraud import DEFAULT_PARAMS, Assessment, FraudParams, assess_vehicle, fields_from
from pipelines.simulator import SimulationConfig, vehicle

#: The flags that reveal each simulated fraud kind (as ``batch/evaluate.py`` counts them).
KIND_FLAGS: dict[str, frozenset[str]] = {
    "rollback_before_sale": frozenset({"rollback_before_sale"}),
    "gradual_clocking": frozenset({"gradual_clocking"}),
    "wreck_back_on_road": frozenset({"activity_after_wreck"}),
    "cloned_identity": frozenset({"impossible_travel", "interleaved_odometers"}),
    "replay": frozenset({"duplicate_event"}),
}


@dataclass(frozen=True, slots=True)
class KindQuality:
    kind: str
    tp: int
    fp: int
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
class VehicleOutcome:
    """One vehicle: its labelled fraud kinds, the rules' label, and the flags that fired."""

    index: int
    kinds: frozenset[str]
    label: str
    flags: frozenset[str]
    reasons: tuple[str, ...]


@dataclass
class FleetQuality:
    vehicles: int = 0
    events: int = 0
    outcomes: list[VehicleOutcome] = field(default_factory=list)

    def kind(self, kind: str) -> KindQuality:
        tp = fp = fn = 0
        for o in self.outcomes:
            predicted = o.label != "clean" and bool(o.flags & KIND_FLAGS[kind])
            actual = kind in o.kinds
            tp += predicted and actual
            fp += predicted and not actual
            fn += actual and not predicted
        return KindQuality(kind, tp, fp, fn)

    @property
    def kinds(self) -> list[KindQuality]:
        return [self.kind(k) for k in KIND_FLAGS]

    @property
    def clean(self) -> list[VehicleOutcome]:
        return [o for o in self.outcomes if not o.kinds]

    @property
    def clean_false_positives(self) -> list[VehicleOutcome]:
        return [o for o in self.clean if o.label != "clean"]

    @property
    def false_positive_rate(self) -> float:
        clean = len(self.clean)
        return len(self.clean_false_positives) / clean if clean else 0.0

    def merge(self, other: FleetQuality) -> FleetQuality:
        return FleetQuality(
            self.vehicles + other.vehicles, self.events + other.events, self.outcomes + other.outcomes
        )

    def report(self) -> str:
        lines = [f"{self.vehicles} vehicles, {self.events} events"]
        for k in self.kinds:
            lines.append(
                f"  {k.kind:22s} support {k.support:4d}  tp {k.tp:4d} fp {k.fp:3d} fn {k.fn:3d}"
                f"  P {k.precision:.3f}  R {k.recall:.3f}  F1 {k.f1:.3f}"
            )
        fps = self.clean_false_positives
        lines.append(
            f"  clean cars labelled not clean: {self.false_positive_rate:.2%} ({len(fps)} of {len(self.clean)})"
        )
        return "\n".join(lines)


def stored_vehicle(
    config: SimulationConfig, index: int, params: FraudParams = DEFAULT_PARAMS
) -> tuple[Assessment, frozenset[str], int]:
    """Vehicle ``index`` as the batch layer assesses it: the assessment, its fraud kinds, its event count."""
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
    kinds = frozenset(str(x["kind"]) for x in labels if x["kind"] != "noise")
    return assess_vehicle(fields, stream_flags=stream, params=params), kinds, len(fields)


def evaluate_fleet(config: SimulationConfig, params: FraudParams = DEFAULT_PARAMS) -> FleetQuality:
    """Assess every vehicle of the fleet ``config`` and compare with its labels."""
    out = FleetQuality()
    for index in range(config.vehicles):
        assessment, kinds, n = stored_vehicle(config, index, params)
        if n == 0:  # no event, no row in the master dataset: the batch layer never sees it
            continue
        flags = frozenset(f for c in assessment.checked for f in c.flags)
        score = assessment.score
        out.outcomes.append(VehicleOutcome(index, kinds, score.label, flags, score.reasons))
        out.events += n
        out.vehicles += 1
    return out


def evaluate_seeds(
    seeds: Sequence[int], vehicles: int, days: int, fraud_rate: float, params: FraudParams = DEFAULT_PARAMS
) -> Iterator[tuple[int, FleetQuality]]:
    for seed in seeds:
        config = SimulationConfig(vehicles=vehicles, days=days, seed=seed, fraud_rate=fraud_rate)
        yield seed, evaluate_fleet(config, params)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--vehicles", type=int, default=1000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--fraud-rate", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--show-errors", action="store_true", help="list missed and false-positive vehicles")
    args = ap.parse_args(argv)
    total = FleetQuality()
    for seed, quality in evaluate_seeds(args.seeds, args.vehicles, args.days, args.fraud_rate):
        print(f"seed {seed}: {quality.report()}")
        if args.show_errors:
            for o in quality.outcomes:
                wrong = [
                    k
                    for k in KIND_FLAGS
                    if (k in o.kinds) != (o.label != "clean" and bool(o.flags & KIND_FLAGS[k]))
                ]
                if wrong or (not o.kinds and o.label != "clean"):
                    print(f"    #{o.index} kinds={sorted(o.kinds)} {o.label} {list(o.reasons)}")
        total = total.merge(quality)
    if len(args.seeds) > 1:
        print(f"all seeds: {total.report()}")


if __name__ == "__main__":
    main()
