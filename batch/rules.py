"""The fraud rules as the batch layer applies them: one adapter over ``pipelines.rules``.

The rules are pure functions in ``pipelines/rules/fraud.py``, shared with the
speed layer.  :func:`pipelines.rules.fraud.assess_vehicle` runs
``check_event`` over a vehicle's whole history, then the batch-only rules
(``rollback_before_sale``, ``gradual_clocking``) and ``fraud_score``; this
module only turns the rules' result into a :class:`VehicleVerdict` (the
rules' ``EventFields`` are built straight from Arrow columns in
:mod:`batch.views.annotate`).  It never re-implements a rule.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from batch.errors import BatchError

#: Stream flags the batch merges in: the speed layer alone sees a replay the master dataset stored once.
STREAM_ONLY_FLAGS = frozenset({"duplicate_event"})


@dataclass
class VehicleVerdict:
    """What the rules say about one vehicle's history (events in the rules' order)."""

    order: list[str]  # event ids in the order the rules applied them
    event_flags: dict[str, list[str]]  # event id -> batch flags
    event_evidence: dict[str, str]  # event id -> JSON of {flag: detail}, flagged events only
    score: float
    label: str  # clean | suspicious | fraudulent
    reasons: list[tuple[str, list[str]]] = field(default_factory=list)  # (flag, evidence event ids)
    explanation: list[str] = field(default_factory=list)  # fraud_score's reasons, strongest first


class RuleEngine(Protocol):
    def evaluate(
        self, events: Sequence[Any], stream_flags: Mapping[str, Sequence[str]] | None = None
    ) -> VehicleVerdict: ...


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


class PipelinesRuleEngine:
    """Applies ``pipelines.rules.fraud.assess_vehicle`` to one vehicle's events."""

    def __init__(self, fraud: Any, params: Any = None) -> None:
        self.fraud = fraud
        self.params = fraud.DEFAULT_PARAMS if params is None else params

    def evaluate(
        self, events: Sequence[Any], stream_flags: Mapping[str, Sequence[str]] | None = None
    ) -> VehicleVerdict:
        """``events``: the rules' ``EventFields`` (see :func:`batch.views.annotate.event_fields`).

        ``stream_flags``: event id -> flags the speed layer raised; only
        :data:`STREAM_ONLY_FLAGS` are merged in.
        """
        fraud = self.fraud
        stream = {
            eid: [f for f in flags if f in STREAM_ONLY_FLAGS] for eid, flags in (stream_flags or {}).items()
        }
        assessment = fraud.assess_vehicle(
            events, stream_flags={k: v for k, v in stream.items() if v}, params=self.params
        )
        order, flags, evidence = [], {}, {}
        by_flag: dict[str, list[str]] = {}
        for checked in assessment.checked:
            eid = checked.event.event_id
            order.append(eid)
            flags[eid] = sorted(set(checked.flags))
            if checked.flags:
                evidence[eid] = json.dumps(_jsonable(checked.evidence), sort_keys=True)
            for flag in checked.flags:
                ids = by_flag.setdefault(flag, [])
                related = [
                    v
                    for k, v in checked.evidence.get(flag, {}).items()
                    if k.endswith("event_id") and isinstance(v, str)
                ]
                for x in (*related, eid):
                    if x not in ids:
                        ids.append(x)
        weights = getattr(fraud, "FLAG_WEIGHTS", {})
        reasons = sorted(by_flag.items(), key=lambda kv: (-weights.get(kv[0], 0.0), kv[0]))
        score = assessment.score
        return VehicleVerdict(
            order, flags, evidence, float(score.score), str(score.label), reasons, list(score.reasons)
        )


def _verdict(
    ids: Sequence[str], flags: Sequence[Sequence[str]], evidence: Mapping[int, Any], score: Any, weights: Any
) -> VehicleVerdict:
    """A verdict from per-event flags (index -> evidence for the flagged events), as the Python engine builds it."""
    event_flags, event_evidence = {}, {}
    by_flag: dict[str, list[str]] = {}
    for i in sorted(evidence):
        eid, ev = ids[i], evidence[i]
        event_flags[eid] = sorted(set(flags[i]))
        event_evidence[eid] = json.dumps(_jsonable(ev), sort_keys=True)
        for flag in flags[i]:
            found = by_flag.setdefault(flag, [])
            related = [
                v for k, v in ev.get(flag, {}).items() if k.endswith("event_id") and isinstance(v, str)
            ]
            for x in (*related, eid):
                if x not in found:
                    found.append(x)
    reasons = sorted(by_flag.items(), key=lambda kv: (-weights.get(kv[0], 0.0), kv[0]))
    return VehicleVerdict(
        list(ids),
        event_flags,
        event_evidence,
        float(score.score),
        str(score.label),
        reasons,
        list(score.reasons),
    )


class KernelRuleEngine:
    """The compiled rules (``pipelines.rules.kernels``) over a vehicle's columns; same verdicts as
    :class:`PipelinesRuleEngine` (the Python rules are their test oracle)."""

    def __init__(self, kernels: Any, params: Any, weights: Mapping[str, float]) -> None:
        self.kernels = kernels
        self.params = params
        self.weights = weights

    def evaluate(
        self, events: Sequence[Any], stream_flags: Mapping[str, Sequence[str]] | None = None
    ) -> VehicleVerdict:
        """``events``: ``EventFields`` in any order (sorted here by the rules' key)."""
        from pipelines.rules.stream import sort_key

        ordered = sorted(events, key=sort_key)
        return self.evaluate_columns(self.kernels.columns(ordered), stream_flags)

    def evaluate_columns(
        self, columns: Any, stream_flags: Mapping[str, Sequence[str]] | None = None
    ) -> VehicleVerdict:
        """``columns``: :class:`pipelines.rules.kernels.Columns` in the rules' order."""
        by_index: dict[int, list[str]] = {}
        if stream_flags:
            for i, eid in enumerate(columns.ids):
                keep = [f for f in stream_flags.get(eid, ()) if f in STREAM_ONLY_FLAGS]
                if keep:
                    by_index[i] = keep
        got = self.kernels.assess_columns(columns, by_index, self.params)
        return _verdict(columns.ids, got.flags, got.evidence, got.score, self.weights)


def load_engine(name: str | None = None, fleet_profile: tuple[float, ...] | None = None) -> RuleEngine:
    """The rule engine: the compiled rules (``pipelines.rules.kernels``), or the Python rules
    (``pipelines.rules.fraud``) when numba is not installed or ``name`` is ``"python"``.

    ``fleet_profile``: the fleet's km/day per twelfth of the year
    (:func:`pipelines.rules.fraud.fleet_profile`), which gradual clocking compares a car's rates with.
    """
    if name not in (None, "python"):
        raise BatchError(f"unknown rule engine {name!r}: the compiled rules (default) or 'python'")
    try:
        fraud = importlib.import_module("pipelines.rules.fraud")
    except ImportError as exc:
        raise BatchError(f"the fraud rules (pipelines.rules.fraud) are not available: {exc}") from None
    params = fraud.DEFAULT_PARAMS
    if fleet_profile is not None:
        params = dataclasses.replace(params, fleet_profile=tuple(fleet_profile))
    if name != "python":
        try:
            kernels = importlib.import_module("pipelines.rules.kernels")
        except ImportError:  # numba missing (the spark extra not installed): the Python rules
            pass
        else:
            return KernelRuleEngine(kernels, params, fraud.FLAG_WEIGHTS)
    return PipelinesRuleEngine(fraud, params)
