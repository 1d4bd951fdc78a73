"""Fraud quality: ``fraud_scores`` against the simulator's ground-truth labels.

A vehicle is *predicted* as a fraud kind when its label is not ``clean`` and
one of the kind's flags fired on it.  Per kind: precision, recall and F1 over
the fleet; for clean cars (no fraud label; honest typos included): the share
labelled anything but ``clean`` (false positives).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from batch.config import BatchConfig
from batch.errors import RunNotFoundError
from batch.publish import read_current
from batch.testing import simulation_labels

#: The flags that reveal each simulated fraud kind.
KIND_FLAGS: dict[str, frozenset[str]] = {
    "rollback_before_sale": frozenset({"rollback_before_sale"}),
    "gradual_clocking": frozenset({"gradual_clocking"}),
    "wreck_back_on_road": frozenset({"activity_after_wreck"}),
    "cloned_identity": frozenset({"impossible_travel", "interleaved_odometers"}),
    "replay": frozenset({"duplicate_event"}),
}


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


@dataclass
class Evaluation:
    vehicles: int
    clean_vehicles: int
    clean_false_positives: int
    false_positive_rate: float
    kinds: list[KindQuality]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def evaluate(scores: dict[str, tuple[str, set[str]]], truth: dict[str, set[str]]) -> Evaluation:
    """``scores``: vehicle -> (label, flags); ``truth``: vehicle -> labelled fraud kinds."""
    vehicles = set(scores) | set(truth)
    kinds = []
    for kind, flags in KIND_FLAGS.items():
        tp = fp = fn = 0
        for v in vehicles:
            label, fired = scores.get(v, ("clean", set()))
            predicted = label != "clean" and bool(fired & flags)
            actual = kind in truth.get(v, set())
            tp += predicted and actual
            fp += predicted and not actual
            fn += actual and not predicted
        p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        kinds.append(KindQuality(kind, tp + fn, tp, fp, fn, round(p, 4), round(r, 4), round(f1, 4)))
    clean = [v for v in vehicles if not truth.get(v)]
    fps = sum(1 for v in clean if scores.get(v, ("clean", set()))[0] != "clean")
    return Evaluation(len(vehicles), len(clean), fps, round(_ratio(fps, len(clean)), 4), kinds)


def read_scores(path: Path) -> dict[str, tuple[str, set[str]]]:
    table = pq.read_table(sorted(path.glob("*.parquet")), columns=["vehicle", "label", "flags"])
    return {
        v: (label, set(flags or ()))
        for v, label, flags in zip(
            *(table.column(c).to_pylist() for c in ("vehicle", "label", "flags")), strict=True
        )
    }


def evaluate_published(
    config: BatchConfig, sim_dir: Path, vehicle_of: Callable[[str], str | None] | None = None
) -> Evaluation:
    """Evaluate the published ``fraud_scores`` against ``sim_dir/labels.jsonl``.

    ``vehicle_of`` maps a label's VIN to the views' pseudonym (see
    :func:`batch.testing.simulation_labels`); by default the stand-in of
    ``pcc batch load-simulation``.
    """
    current = read_current(config)
    if current is None:
        raise RunNotFoundError(f"no batch version is published under {config.batch_dir}; run `pcc batch run`")
    if not (sim_dir / "labels.jsonl").exists():
        raise RunNotFoundError(
            f"{sim_dir / 'labels.jsonl'} does not exist (a `pcc simulate --out` directory?)"
        )
    return evaluate(
        read_scores(config.batch_dir / current["views"]["fraud_scores"]),
        simulation_labels(sim_dir, vehicle_of) if vehicle_of else simulation_labels(sim_dir),
    )
