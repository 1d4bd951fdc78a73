"""A vehicle's events as the columns the compiled rules (:mod:`pipelines.rules.kernels`) read.

Kept apart from the kernels so that a caller can build them without numba installed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from pipelines.rules.stream import EventFields

__all__ = ["ODOMETER_READING", "OTHER", "OWNERSHIP_CHANGE", "WRECK_DECLARATION", "Columns", "columns"]

#: event kinds the rules read
OTHER, WRECK_DECLARATION, OWNERSHIP_CHANGE, ODOMETER_READING = 0, 1, 2, 3


class Columns(NamedTuple):
    """One vehicle's events as columns, in ``sort_key`` order."""

    ids: Sequence[str]  # event ids
    codes: np.ndarray  # int64: one code per distinct event id
    t: np.ndarray  # int64 event time (ms)
    km: np.ndarray  # int64 odometer (any value where has_km is False)
    has_km: np.ndarray  # bool
    lat: np.ndarray  # float64, NaN: none
    lon: np.ndarray  # float64, NaN: none
    verified: np.ndarray  # bool
    kind: np.ndarray  # int8: OTHER, WRECK_DECLARATION, OWNERSHIP_CHANGE, ODOMETER_READING
    tier: Sequence[int | None] | None = None


def columns(events: Sequence[EventFields]) -> Columns:
    """The columns of events already in ``sort_key`` order (tests and benches; the batch builds them from Arrow)."""
    ids = [e.event_id for e in events]
    codes: dict[str, int] = {}
    kinds = {
        "wreck_declaration": WRECK_DECLARATION,
        "ownership_change": OWNERSHIP_CHANGE,
        "odometer_reading": ODOMETER_READING,
    }
    tiers = [e.tier for e in events]
    return Columns(
        ids,
        np.array([codes.setdefault(i, len(codes)) for i in ids], np.int64),
        np.array([e.event_time_ms for e in events], np.int64),
        np.array([0 if e.odometer_km is None else e.odometer_km for e in events], np.int64),
        np.array([e.odometer_km is not None for e in events], np.bool_),
        np.array([math.nan if e.lat is None else e.lat for e in events], np.float64),
        np.array([math.nan if e.lon is None else e.lon for e in events], np.float64),
        np.array([e.verified for e in events], np.bool_),
        np.array([kinds.get(e.event_type, OTHER) for e in events], np.int8),
        None if all(x is None for x in tiers) else tiers,
    )
