"""Injected frauds: each edits a :class:`Life` before rendering and leaves a label."""

from __future__ import annotations

import math

import numpy as np

from pipelines.simulator.config import FRAUD_KINDS
from pipelines.simulator.life import CONNECTED, DAY_MS, IND_GARAGES, Label, Life, Proto
from pipelines.simulator.names import CITIES


def choose_fraud(life: Life) -> str | None:
    """Whether this vehicle is a fraud case, and which kind (decided before its life is drawn)."""
    rng = life.rng
    if rng.random() >= life.cfg.fraud_rate:
        return None
    kind = FRAUD_KINDS[int(rng.integers(len(FRAUD_KINDS)))]
    if life.n < 30 and kind != "replay":
        return "replay"
    life.allow_total_loss = False  # a fraud case has no honest end of life to hide behind
    if kind == "gradual_clocking":
        life.connected = False  # clocking is done where no telematics contradicts it
        life.manual_user = True  # the owner's own entries carry the lie
    elif kind == "cloned_identity":
        life.connected = True  # the real car reports where it is
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


def rollback_before_sale(life: Life) -> None:
    """The seller winds the odometer back a few days to weeks before selling the car.

    The car's passport holds at least one honest reading before the rollback
    (when its life has any reading early enough): a wind-back with no earlier
    reading on record leaves nothing to contradict, so it is no rollback to detect.
    """
    rng, n = life.rng, life.n
    readings = _odometer_events(life, life.start_ms, life.end_ms)
    first = _day(life, readings[0].t) + 1 if readings else 1  # the day after the first reading
    lo = min(60, n // 3)
    if first + 3 < n:
        lo = max(lo, first + 3)
    sale_day = int(rng.integers(lo, max(n, lo + 1)))
    rollback_day = max(sale_day - int(rng.integers(3, 30)), first if first + 3 < n else 1)
    t_r = life.start_ms + rollback_day * DAY_MS
    true_km = float(life.odo_at(np.array([t_r]))[0])
    drop = max(true_km * float(rng.uniform(0.3, 0.6)), min(20_000.0, true_km * 0.8))
    if true_km < 4_000:
        drop = true_km * 0.8

    def wind_back(t: np.ndarray, odo: np.ndarray) -> np.ndarray:
        return np.where(t >= t_r, odo - drop, odo)

    life.transforms.append(wind_back)
    sale = life.sale(sale_day)
    before = _odometer_events(life, life.start_ms, t_r - 1)[-1:]
    lowered = [p for p in _odometer_events(life, t_r, sale.t) if p is not sale]
    detail: dict[str, object] = {"drop_km": round(drop), "sale_day": sale_day}
    life.labels.append(Label("rollback_before_sale", [*before, *lowered, sale], t_r, sale.t, detail))


#: Gradual clocking starts once the passport shows the car's own trend: two readings this far apart.
TREND_DAYS = 60


def gradual_clocking(life: Life) -> None:
    """From some day on, the displayed odometer only counts a fraction of the distance driven.

    The change comes once the passport holds two readings at least
    :data:`TREND_DAYS` apart (when the life has them early enough): the trend
    the clocked readings depart from.  Without it, a slower rate from the first
    readings on is just a car that is driven little.
    """
    rng, n = life.rng, life.n
    lo, hi = int(n * 0.15), max(int(n * 0.5), int(n * 0.15) + 1)
    readings = _odometer_events(life, life.start_ms, life.end_ms)
    trend = next((p for p in readings if p.t - readings[0].t >= TREND_DAYS * DAY_MS), None)
    if trend is not None and _day(life, trend.t) + 1 + TREND_DAYS < n:
        lo = max(lo, _day(life, trend.t) + 1)
        hi = max(hi, lo + 1)
    t_c = life.start_ms + int(rng.integers(lo, hi)) * DAY_MS
    share = float(rng.uniform(0.25, 0.5))
    base = float(life.odo_at(np.array([t_c]))[0])

    def clock(t: np.ndarray, odo: np.ndarray) -> np.ndarray:
        return np.where(t >= t_c, base + share * (odo - base), odo)

    life.transforms.append(clock)
    life.labels.append(
        _Deferred("gradual_clocking", [], t_c, life.end_ms, {"share_counted": round(share, 2)})
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
    life.labels.append(_Deferred("wreck_back_on_road", [], wreck.t, life.end_ms, {"wreck": wreck}))


def cloned_identity(life: Life) -> None:
    """A second car carries the same VIN and reports from a distant city at the same time."""
    rng, n = life.rng, life.n
    far = [c for c in CITIES if _km(c.lat, c.lon, *life.home) > 800]
    city = far[int(rng.integers(len(far)))]
    length = min(int(rng.integers(60, 240)), n - 1)
    first = int(rng.integers(0, n - length))
    t0 = life.start_ms + first * DAY_MS
    km0 = float(life.odo_at(np.array([t0]))[0]) * float(rng.uniform(0.5, 1.5))
    rate = float(rng.uniform(15, 60))
    operator = next(c for c in CONNECTED if c != life.operator)
    garage = IND_GARAGES[int(rng.integers(len(IND_GARAGES)))]
    clone: list[Proto] = []
    day = first
    while day < first + length:
        t = life.time_in_day(day, 7, 21)
        km = round(km0 + rate * (t - t0) / DAY_MS)
        where = life.near(0.05, (city.lat, city.lon))
        if rng.random() < 0.6:
            p = Proto(t, "odometer_reading", operator, {"location": where}, clone_odo=km)
        else:
            p = Proto(t, "maintenance", garage, {"service_type": "oil_change", "in_network": False,
                                                 "location": where}, clone_odo=km)  # fmt: skip
        clone.append(life.add(p))
        day += int(rng.integers(3, 20))
    life.labels.append(Label("cloned_identity", clone, t0, clone[-1].t, {"clone_city": city.name}))


def replay(life: Life) -> None:
    """Some events are sent again later, byte for byte (same event id)."""
    life.labels.append(_Deferred("replay", [], 0, 0, {"copies": int(life.rng.integers(1, 4))}))


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
            resolved.append(Label(label.kind, events, label.start_ms, label.end_ms, label.detail))
        elif label.kind == "wreck_back_on_road":
            wreck = label.detail.pop("wreck")
            assert isinstance(wreck, Proto)
            after = sorted((p for p in life.protos if p.t > label.start_ms), key=lambda p: p.t)
            resolved.append(Label(label.kind, [wreck, *after], label.start_ms, label.end_ms, label.detail))
        elif label.kind == "replay":
            pool = sorted(life.protos, key=lambda p: p.t)
            if not pool:
                continue
            k = min(int(label.detail["copies"]), len(pool))  # type: ignore[call-overload]
            chosen = [pool[int(i)] for i in sorted(life.rng.choice(len(pool), k, replace=False))]
            life.replays.extend(chosen)
            label.detail["copies"] = k
            resolved.append(Label("replay", chosen, chosen[0].t, chosen[-1].t, label.detail))
    life.labels = resolved


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 12_742.0 * math.asin(math.sqrt(a))
