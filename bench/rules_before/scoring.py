"""The vehicle fraud score: per-event flags combined into one number and a label."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from bench.rules_before.stream import DEFAULT_PARAMS, Evidence, FraudParams
from pipelines.errors import PccValueError

#: How much one flagged event weighs in the score (a probability-like strength).
FLAG_WEIGHTS: dict[str, float] = {
    "rollback_before_sale": 0.8,
    "activity_after_wreck": 0.6,
    "gradual_clocking": 0.5,
    "odometer_rollback": 0.4,
    "duplicate_event": 0.4,
    "impossible_travel": 0.35,
    "implausible_rate": 0.2,
}
#: Evidence from low-tier sources (manual entry) counts for less.
TIER_FACTOR: dict[int, float] = {1: 1.0, 2: 1.0, 3: 0.8, 4: 0.5}
#: What the whole history says of an odometer flag (``standing``, set by
#: :func:`pipelines.rules.history.odometer_standing`): a one-off reading (a
#: typo) that the next reading contradicts, or a one-off *reference* that the
#: flagged reading only seems to contradict, is weak evidence; a jump that no
#: later reading confirms yet is half-way; a jump the later readings follow is full.
STANDING_FACTOR: dict[str, float] = {
    "one_off": 0.25,
    "reference_one_off": 0.25,
    "unconfirmed": 0.6,
    "confirmed": 1.0,
}
SUSPICIOUS_AT = 0.35
FRAUDULENT_AT = 0.7


class Score(NamedTuple):
    score: float  # in [0, 1]
    reasons: tuple[str, ...]  # strongest first, e.g. "odometer_rollback x2 (drop 41,200 km)"
    label: str  # clean | suspicious | fraudulent


def strength(flag: str, detail: Mapping[str, Any], params: FraudParams = DEFAULT_PARAMS) -> float:
    """How strongly one flagged event points at fraud, from the flag and its evidence."""
    if flag not in FLAG_WEIGHTS:
        raise PccValueError(f"unknown fraud flag {flag!r}; expected one of {sorted(FLAG_WEIGHTS)}")
    value = FLAG_WEIGHTS[flag]
    tier = detail.get("tier")
    if tier is not None:
        value *= TIER_FACTOR.get(int(tier), 0.5)
    standing = detail.get("standing")
    if standing is not None:
        value *= STANDING_FACTOR.get(str(standing), 1.0)
    if flag == "impossible_travel" and "distance_km" in detail:
        # a jump of a few hundred km is within reach of a wrongly placed or timed
        # reading (a garage's registered address, a late GPS fix); a far one is not
        value *= min(1.0, float(detail["distance_km"]) / params.far_travel_km)
    return value


def fraud_score(
    flags_with_evidence: Iterable[tuple[Sequence[str], Evidence]], params: FraudParams = DEFAULT_PARAMS
) -> Score:
    """Combine per-event flags into a vehicle score.

    Each flagged event is independent evidence of :func:`strength` (the flag's
    ``FLAG_WEIGHTS``, times ``TIER_FACTOR`` of its source when known, times what
    the evidence says: ``STANDING_FACTOR`` of an odometer flag, the distance of
    an impossible travel); the score is ``1 - prod(1 - strength)`` with at most
    three events counted per flag, so one typo gives at most a suspicion, never
    a verdict.  Labels: ``fraudulent`` from 0.7, ``suspicious`` from 0.35, else
    ``clean``.
    """
    strengths: dict[str, list[float]] = {}
    drops: dict[str, int] = {}
    for flags, evidence in flags_with_evidence:
        for flag in flags:
            detail = evidence.get(flag, {})
            strengths.setdefault(flag, []).append(strength(flag, detail, params))
            if "drop_km" in detail:
                drops[flag] = max(drops.get(flag, 0), int(detail["drop_km"]))
    keep = 1.0
    parts: list[tuple[float, str]] = []
    for flag, values in strengths.items():
        top = sorted(values, reverse=True)[:3]
        flag_keep = math.prod(1.0 - s for s in top)
        keep *= flag_keep
        reason = flag if len(values) == 1 else f"{flag} x{len(values)}"
        if flag in drops:
            reason += f" (drop {drops[flag]:,} km)"
        parts.append((1.0 - flag_keep, reason))
    score = round(min(1.0, max(0.0, 1.0 - keep)), 6)
    label = "fraudulent" if score >= FRAUDULENT_AT else "suspicious" if score >= SUSPICIOUS_AT else "clean"
    reasons = tuple(r for _, r in sorted(parts, key=lambda p: (-p[0], p[1])))
    return Score(score, reasons, label)
