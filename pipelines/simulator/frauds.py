"""Injected frauds: each edits a :class:`Life` before rendering and leaves a label."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np

from pipelines.simulator.config import FRAUD_KINDS
from pipelines.simulator.life import CONNECTED, DAY_MS, IND_GARAGES, INSPECTION, MANUAL, Label, Life, Proto
from pipelines.simulator.variants import TWIN_CADENCE_DAYS, draw_variant


def choose_fraud(life: Life) -> str | None:
    """Whether this vehicle is a fraud case, which kind, and its variant (decided before its life is drawn)."""
    rng = life.rng
    if rng.random() >= life.cfg.fraud_rate:
        return None
    kind = FRAUD_KINDS[int(rng.integers(len(FRAUD_KINDS)))]
    if life.n < 30 and kind != "replay":
        kind = "replay"
    life.allow_total_loss = False  # a fraud case has no honest end of life to hide behind
    life.variant = draw_variant(life, kind)
    return kind


def inject(life: Life, kind: str) -> None:
    {
        "rollback_before_sale": rollback_before_sale,
        "gradual_clocking": gradual_clocking,
        "wreck_back_on_road": wreck_back_on_road,
        "cloned_identity": cloned_identity,
        "replay": replay,
    }[kind](life)


def _odometer_events(life: Life, lo_ms: int, hi_ms: int) -> list[Proto]:
    return sorted((p for p in life.protos if p.has_odo and lo_ms <= p.t <= hi_ms), key=lambda p: p.t)


def _day(life: Life, t_ms: int) -> int:
    return (t_ms - life.start_ms) // DAY_MS


def _true_km(life: Life, protos: list[Proto]) -> list[float]:
    return life.odo_at(np.array([p.t for p in protos], dtype=np.int64)).tolist() if protos else []


#: Below this, two readings of one odometer are the same reading (the rules' tolerance).
SAME_READING_KM = 50

#: Days before the sale that each rollback ``timing`` winds the odometer back.
ROLLBACK_GAP_DAYS: dict[str, tuple[int, int]] = {"days": (3, 30), "weeks": (30, 90), "months": (90, 240)}


def rollback_before_sale(life: Life) -> None:
    """The seller winds the odometer back some time before selling the car.

    Every later reading, from every source, is lowered by the same amount.  The
    variant sets the drop (``small``: 5-15 % of the reading, at least 2,000 km;
    ``large``: 30-60 %), how long before the sale (``timing``) and whether the
    car has any honest reading on record before the wind-back (``history``;
    ``none``: it reaches the platform already wound back).  The case is
    ``detectable`` when some lowered reading up to the sale is below an earlier
    honest one: with no earlier reading, or a small drop long before the sale of a
    car read rarely, the odometer never goes down on record.
    """
    rng, n, v = life.rng, life.n, life.variant
    readings = [p for p in _odometer_events(life, life.start_ms, life.end_ms) if not p.typo]
    gap_lo, gap_hi = ROLLBACK_GAP_DAYS[v["timing"]]
    gap = int(rng.integers(gap_lo, gap_hi + 1))
    if v["history"] == "none" or not readings:
        sale_day = int(rng.integers(min(30, n - 1), n))
        t_r = life.start_ms - int(rng.integers(1, 60)) * DAY_MS  # before anything on record
    else:
        first = _day(life, readings[0].t) + 1
        latest = n - 1 - gap
        rollback_day = int(rng.integers(first, latest + 1)) if first <= latest else max(1, min(first, n - 2))
        sale_day = min(rollback_day + gap, n - 1)
        t_r = life.start_ms + rollback_day * DAY_MS
    true_km = float(life.odo_at(np.array([max(t_r, life.start_ms)]))[0])
    if v["drop"] == "small":
        drop = max(true_km * float(rng.uniform(0.05, 0.15)), 2_000.0)
    else:
        drop = max(true_km * float(rng.uniform(0.3, 0.6)), min(20_000.0, true_km * 0.8))
    drop = min(drop, true_km * 0.8)

    def wind_back(t: np.ndarray, odo: np.ndarray) -> np.ndarray:
        return np.where(t >= t_r, odo - drop, odo)

    life.transforms.append(wind_back)
    sale = life.sale(sale_day)
    before = [p for p in readings if p.t < t_r]
    lowered = [p for p in _odometer_events(life, t_r, sale.t) if p is not sale and not p.typo]
    highest = max(_true_km(life, before), default=None)
    shown = [km - drop for km in _true_km(life, [*lowered, sale])]
    detectable = highest is not None and highest - min(shown) > SAME_READING_KM
    detail: dict[str, object] = {
        "drop_km": round(drop),
        "sale_day": sale_day,
        "days_before_sale": round((sale.t - t_r) / DAY_MS, 1),
    }
    life.labels.append(
        Label(
            "rollback_before_sale",
            [*before[-1:], *lowered, sale],
            max(t_r, life.start_ms),
            sale.t,
            detail,
            v,
            detectable,
        )
    )


#: Clocking is visible when the readings on record span this many days on each side of its start.
TREND_DAYS = 60

CLOCKING_START: dict[str, tuple[float, float]] = {
    "early": (0.2, 0.35),
    "mid": (0.35, 0.55),
    "late": (0.55, 0.75),
}


def gradual_clocking(life: Life) -> None:
    """From some day on, the displayed odometer only counts a share (20-80 %) of the distance driven.

    The start (``early``, ``mid``, ``late`` in the window) is drawn without
    looking at the readings.  The case is ``detectable`` when the readings on
    record span at least :data:`TREND_DAYS` on each side of the start: the
    trend the clocked readings depart from, and enough of the new one.
    """
    rng, n, v = life.rng, life.n, life.variant
    lo, hi = CLOCKING_START[v["start"]]
    t_c = life.start_ms + int(n * float(rng.uniform(lo, hi))) * DAY_MS
    share = life.variant_values["share"]
    base = float(life.odo_at(np.array([t_c]))[0])

    def clock(t: np.ndarray, odo: np.ndarray) -> np.ndarray:
        return np.where(t >= t_c, base + share * (odo - base), odo)

    life.transforms.append(clock)
    times = [p.t for p in _odometer_events(life, life.start_ms, life.end_ms + 30 * DAY_MS)]
    before, after = [t for t in times if t < t_c], [t for t in times if t >= t_c]
    span = TREND_DAYS * DAY_MS
    detectable = (
        len(before) >= 2 and len(after) >= 2 and before[-1] - before[0] >= span and after[-1] - t_c >= span
    )
    life.labels.append(
        _Deferred("gradual_clocking", [], t_c, life.end_ms, {"share_counted": round(share, 2)}, v, detectable)
    )


def wreck_back_on_road(life: Life) -> None:
    """A total loss is declared, yet the car keeps being serviced, driven and sold."""
    rng, n = life.rng, life.n
    day = int(rng.integers(int(n * 0.1), max(int(n * 0.6), int(n * 0.1) + 1)))
    _, wreck = life.accident(day, "severe", total_loss=True)
    sale_day = min(day + int(rng.integers(30, 120)), n - 1)
    sale = life.sale(sale_day)
    if sale.t <= wreck.t:
        sale.t = wreck.t + DAY_MS
    life.labels.append(
        _Deferred("wreck_back_on_road", [], wreck.t, life.end_ms, {"wreck": wreck}, life.variant, True)
    )


CLONE_DISTANCE_KM: dict[str, tuple[float, float]] = {
    "near": (100, 300),
    "mid": (300, 800),
    "far": (800, 2_000),
}
CLONE_ODOMETER: dict[str, tuple[float, float]] = {
    "below": (0.5, 0.85),
    "near": (0.02, 0.1),
    "above": (1.15, 1.5),
}
#: How long a clone is seen, per cadence (days): a sparse twin is seen long enough to be seen twice.
CLONE_LENGTH: dict[str, tuple[int, int]] = {
    "daily": (60, 240), "weekly": (60, 240), "six_weekly": (120, 330), "quarterly": (200, 360)
}  # fmt: skip


def _twin_centre(life: Life, km: float) -> tuple[float, float]:
    bearing = float(life.rng.uniform(0, 2 * math.pi))
    lat0, lon0 = life.home
    lat = lat0 + km * math.cos(bearing) / 111.2
    if not 36.0 <= lat <= 64.0:
        bearing, lat = math.pi - bearing, lat0 - km * math.cos(bearing) / 111.2
    lon = lon0 + km * math.sin(bearing) / (111.2 * math.cos(math.radians((lat + lat0) / 2)))
    return lat, lon


def cloned_identity(life: Life) -> None:
    """A second car carries the same VIN, seen in another region with its own odometer.

    The variant sets how far away (``region``), how often it is seen
    (``twin_cadence``: daily telematics of another operator down to once a
    quarter), its odometer against the real car's (``twin_odometer``) and who
    sees it (``twin_sources``: telematics, independent garages, inspection
    centres, its owner's manual entries, a mix); the real car is connected or
    read at its own cadence.  The case is ``detectable`` when the twin has two
    readings or more and the two cars' readings interleave on record (the
    series switch from one car to the other at least twice): otherwise the data
    shows at most one step, which a wind-back or a swapped cluster would show too.
    """
    rng, n, v = life.rng, life.n, life.variant
    centre = _twin_centre(life, float(rng.uniform(*CLONE_DISTANCE_KM[v["region"]])))
    every = TWIN_CADENCE_DAYS[v["twin_cadence"]]
    lo, hi = CLONE_LENGTH[v["twin_cadence"]]
    length = min(int(rng.integers(lo, hi + 1)), n - 1)
    first = int(rng.integers(0, max(n - length, 1)))
    t0 = life.start_ms + first * DAY_MS
    a, b = CLONE_ODOMETER[v["twin_odometer"]]
    factor = float(rng.uniform(a, b))
    if v["twin_odometer"] == "near":
        factor = 1.0 + factor * (1 if rng.random() < 0.5 else -1)
    km0 = float(life.odo_at(np.array([t0]))[0]) * factor
    rate = float(np.clip(rng.lognormal(math.log(35.0), 0.5), 8.0, 150.0))
    operator = next(c for c in CONNECTED if c != life.operator)
    garage = IND_GARAGES[int(rng.integers(len(IND_GARAGES)))]
    inspector = next(c for c in INSPECTION if c != life.inspector)
    clone: list[Proto] = []
    day = first
    while day < first + length:
        t = life.time_in_day(day, 7, 21)
        km = round(km0 + rate * (t - t0) / DAY_MS)
        where = life.near(0.05, centre)
        kind = v["twin_sources"]
        if kind == "mixed":
            kind = ("garage", "inspection", "manual")[int(rng.integers(3))]
        if kind == "telematics":
            p = Proto(t, "odometer_reading", operator, {"location": where}, clone_odo=km)
        elif kind == "garage":
            payload: dict[str, object] = {"service_type": "oil_change", "in_network": False}
            if rng.random() < 0.6:
                payload["location"] = where
            p = Proto(t, "maintenance", garage, payload, clone_odo=km)
        elif kind == "inspection":
            payload = {"result": "pass"}
            if rng.random() < 0.7:
                payload["location"] = where
            p = Proto(t, "inspection", inspector, payload, clone_odo=km)
        else:
            p = Proto(t, "odometer_reading", MANUAL, {}, clone_odo=km)
        clone.append(life.add(p))
        if every == 1:
            day += 1 + int(rng.random() < 0.15)
        else:
            day += max(1, round(every * float(rng.uniform(0.7, 1.3))))
    twin = {id(p) for p in clone}
    series = [id(p) in twin for p in sorted((p for p in life.protos if p.has_odo), key=lambda p: p.t)]
    switches = sum(1 for x, y in pairwise(series) if x != y)
    detail: dict[str, object] = {
        "distance_km": round(_km(*life.home, *centre)),
        "readings": len(clone),
        "switches": switches,
    }
    life.labels.append(
        Label("cloned_identity", clone, t0, clone[-1].t, detail, v, len(clone) >= 2 and switches >= 2)
    )


def replay(life: Life) -> None:
    """Some events are sent again later, byte for byte (same event id)."""
    copies = int(life.variant["copies"])
    life.labels.append(_Deferred("replay", [], 0, 0, {"copies": copies}, life.variant, True))


class _Deferred(Label):
    """A label whose events are known only once the whole life is drawn (see :func:`finish`)."""


def finish(life: Life) -> None:
    """Resolve deferred labels once every event of the life exists."""
    resolved: list[Label] = []
    for label in life.labels:
        if not isinstance(label, _Deferred):
            resolved.append(label)
            continue
        if label.kind == "gradual_clocking":
            events = _odometer_events(life, label.start_ms, label.end_ms)
            resolved.append(
                Label(
                    label.kind,
                    events,
                    label.start_ms,
                    label.end_ms,
                    label.detail,
                    label.variant,
                    label.detectable,
                )
            )
        elif label.kind == "wreck_back_on_road":
            wreck = label.detail.pop("wreck")
            assert isinstance(wreck, Proto)
            after = sorted((p for p in life.protos if p.t > label.start_ms), key=lambda p: p.t)
            resolved.append(
                Label(
                    label.kind,
                    [wreck, *after],
                    label.start_ms,
                    label.end_ms,
                    label.detail,
                    label.variant,
                    True,
                )
            )
        elif label.kind == "replay":
            pool = sorted(life.protos, key=lambda p: p.t)
            if not pool:
                continue
            k = min(int(label.detail["copies"]), len(pool))  # type: ignore[call-overload]
            chosen = [pool[int(i)] for i in sorted(life.rng.choice(len(pool), k, replace=False))]
            life.replays.extend(chosen)
            label.detail["copies"] = k
            resolved.append(
                Label("replay", chosen, chosen[0].t, chosen[-1].t, label.detail, label.variant, True)
            )
    life.labels = resolved


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 12_742.0 * math.asin(math.sqrt(a))
