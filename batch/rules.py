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

    def __init__(self, fraud: Any) -> None:
        self.fraud = fraud

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
        assessment = fraud.assess_vehicle(events, stream_flags={k: v for k, v in stream.items() if v})
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


def load_engine(name: str | None = None) -> RuleEngine:
    """The rule engine: ``pipelines.rules.fraud`` unless another is named (``module:Class``)."""
    if name:
        module, _, attr = name.partition(":")
        return getattr(importlib.import_module(module), attr)()  # type: ignore[no-any-return]
    try:
        fraud = importlib.import_module("pipelines.rules.fraud")
    except ImportError as exc:
        raise BatchError(f"the fraud rules (pipelines.rules.fraud) are not available: {exc}") from None
    return PipelinesRuleEngine(fraud)
