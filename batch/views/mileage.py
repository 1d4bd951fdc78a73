"""Reconciling one vehicle's odometer readings across sources.

The reconciled curve is the heaviest non-decreasing chain of readings (each
reading weighs its quality index, so a verified telematics reading outweighs a
manual entry): readings on the chain are kept as they are; every other reading
is an outlier, explained by the kept reading it contradicts, and the curve
takes the value interpolated in time between its kept neighbours.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

#: How a producer's id maps to the kind of source a timeline shows.
SOURCE_KINDS: tuple[tuple[str, str], ...] = (
    ("cc-", "telematics"),
    ("insp-", "inspection"),
    ("garage-", "garage"),
    ("ins-", "insurer"),
    ("manual-", "manual"),
)


def source_kind(source_id: str) -> str:
    for prefix, kind in SOURCE_KINDS:
        if source_id.startswith(prefix):
            return kind
    return "other"


@dataclass(frozen=True)
class Reconciled:
    reconciled_km: list[int]
    outlier_reason: list[str | None]


def heaviest_monotone_chain(values: list[int], weights: list[float]) -> list[int]:
    """Indexes of the maximum-weight non-decreasing subsequence of ``values`` (O(n log n))."""
    n = len(values)
    if n == 0:
        return []
    ranks = {v: i for i, v in enumerate(sorted(set(values)))}
    size = len(ranks)
    tree_w = [0.0] * (size + 1)  # Fenwick tree of prefix maxima: best chain weight ending at value <= rank
    tree_i = [-1] * (size + 1)
    best_w = [0.0] * n
    prev = [-1] * n
    for i, (v, w) in enumerate(zip(values, weights, strict=True)):
        r = ranks[v] + 1
        bw, bi, j = 0.0, -1, r
        while j > 0:
            if tree_w[j] > bw:
                bw, bi = tree_w[j], tree_i[j]
            j -= j & -j
        best_w[i], prev[i] = bw + w, bi
        j = r
        while j <= size:
            if best_w[i] > tree_w[j]:
                tree_w[j], tree_i[j] = best_w[i], i
            j += j & -j
    end = max(range(n), key=lambda k: (best_w[k], -k))
    chain = []
    while end != -1:
        chain.append(end)
        end = prev[end]
    return chain[::-1]


def reconcile(times_ms: list[int], km: list[int], weights: list[float], event_ids: list[str]) -> Reconciled:
    """Reconcile readings sorted by time; see the module docstring."""
    n = len(km)
    if all(a <= b for a, b in pairwise(km)) and all(a < b for a, b in pairwise(times_ms)):
        # the common case: already one non-decreasing chain, nothing to explain or interpolate
        return Reconciled(list(km), [None] * n)
    kept = heaviest_monotone_chain(km, [max(w, 1e-6) for w in weights])
    kept_set = set(kept)
    kept_t = [times_ms[i] for i in kept]
    kept_km = [km[i] for i in kept]
    curve = np.interp(times_ms, kept_t, kept_km) if kept else np.asarray(km, dtype=float)
    reasons: list[str | None] = []
    for i in range(n):
        if i in kept_set:
            reasons.append(None)
            continue
        pos = bisect.bisect_left(kept_t, times_ms[i])
        before = kept[pos - 1] if pos > 0 else None
        after = kept[pos] if pos < len(kept) else None
        if before is not None and km[i] < km[before]:
            reasons.append(f"below the earlier reading of {km[before]} km (event {event_ids[before]})")
        elif after is not None and km[i] > km[after]:
            reasons.append(f"above the later reading of {km[after]} km (event {event_ids[after]})")
        else:
            reasons.append("off the vehicle's reconciled curve")
    return Reconciled([round(float(c)) for c in curve], reasons)
