"""The mileage curve as inline SVG, drawn on the server (no chart library, no script needed).

Every reading is one ``<circle class="pt ...">`` carrying ``data-event-id``,
``data-km`` and ``data-verification``: verified readings are filled discs,
unverified ones hollow rings with a dashed outline; the colour is the quality
index (red 0 → amber → green 1).  Segments where the odometer goes down are
drawn red.  Accidents and a wreck are marked by vertical lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from pipelines.events.envelope import parse_time

WIDTH, HEIGHT = 860, 320
_LEFT, _RIGHT, _TOP, _BOTTOM = 74, 20, 18, 44


def quality_colour(quality: float | None) -> str:
    """Red (0) through amber to green (1); grey when unknown."""
    if quality is None:
        return "#8a8f98"
    q = min(1.0, max(0.0, float(quality)))
    return f"hsl({round(q * 120)}, 68%, 40%)"


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / max(1, target)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def _ts(text: str) -> float:
    return parse_time(text).timestamp()


def _month_ticks(t0: float, t1: float, target: int = 7) -> list[tuple[float, str]]:
    start, end = datetime.fromtimestamp(t0, UTC), datetime.fromtimestamp(t1, UTC)
    months = max(1, (end.year - start.year) * 12 + end.month - start.month)
    step = next((s for s in (1, 2, 3, 6, 12, 24, 60) if months / s <= target), 120)
    ticks: list[tuple[float, str]] = []
    y, m = start.year, start.month
    while True:
        m += 1
        if m > 12:
            y, m = y + 1, 1
        if (y * 12 + m - 1) % step:
            continue
        t = datetime(y, m, 1, tzinfo=UTC).timestamp()
        if t > t1:
            return ticks
        label = str(y) if step >= 12 else f"{y}-{m:02d}"
        ticks.append((t, label))


def mileage_svg(readings: Sequence[dict[str, Any]], markers: Sequence[dict[str, Any]] = ()) -> str:
    """The SVG of the mileage curve; ``markers`` are ``{event_time, kind, label}`` (kind: accident|wreck)."""
    if not readings:
        return (
            f'<svg class="chart" viewBox="0 0 {WIDTH} 80" role="img" aria-label="no odometer readings">'
            f'<text x="{WIDTH // 2}" y="44" text-anchor="middle" class="empty">No odometer readings yet</text></svg>'
        )
    times = [_ts(r["event_time"]) for r in readings]
    kms = [int(r["odometer_km"]) for r in readings]
    t0, t1 = min(times), max(times)
    if t1 - t0 < 86400:
        t0, t1 = t0 - 43200, t1 + 43200
    step = _nice_step(max(kms) - min(0, min(kms)) or 1000)
    k1 = math.ceil(max(kms) / step) * step or step
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def x(t: float) -> float:
        return _LEFT + (t - t0) / (t1 - t0) * plot_w

    def y(km: float) -> float:
        return _TOP + plot_h - km / k1 * plot_h

    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="odometer readings over time: {len(readings)} points">'
    ]
    tick = 0.0
    while tick <= k1 + 1e-9:
        yy = y(tick)
        out.append(f'<line class="grid" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        out.append(
            f'<text class="axis" x="{_LEFT - 8}" y="{yy + 4:.1f}" text-anchor="end">{tick:,.0f} km</text>'
        )
        tick += step
    base = _TOP + plot_h
    out.append(f'<line class="axisline" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{base}" y2="{base}"/>')
    for t, label in _month_ticks(t0, t1):
        out.append(f'<line class="axisline" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{base}" y2="{base + 5}"/>')
        out.append(f'<text class="axis" x="{x(t):.1f}" y="{base + 20}" text-anchor="middle">{label}</text>')
    for mk in markers:
        mx = x(_ts(mk["event_time"]))
        kind = escape(str(mk.get("kind", "accident")))
        out.append(
            f'<g class="marker {kind}"><line x1="{mx:.1f}" x2="{mx:.1f}" y1="{_TOP}" y2="{base}"/>'
            f'<text x="{mx + 4:.1f}" y="{_TOP + 12}">{escape(str(mk.get("label", kind)))}</text></g>'
        )
    for i in range(1, len(readings)):
        cls = "seg down" if kms[i] < kms[i - 1] else "seg"
        out.append(
            f'<line class="{cls}" x1="{x(times[i - 1]):.1f}" y1="{y(kms[i - 1]):.1f}" '
            f'x2="{x(times[i]):.1f}" y2="{y(kms[i]):.1f}"/>'
        )
    for r, t, km in zip(readings, times, kms, strict=True):
        verified = r.get("verification") == "verified"
        status = "verified" if verified else "unverified"
        colour = quality_colour(r.get("quality"))
        fill = colour if verified else "#ffffff"
        flags = ", ".join(r.get("flags") or []) or "none"
        q = "unknown" if r.get("quality") is None else f"{float(r['quality']):.2f}"
        tip = f"{r['event_time'][:10]}: {km:,} km, {status}, quality {q}, source {r['source_id']}, flags: {flags}"
        out.append(
            f'<circle class="pt {status}" cx="{x(t):.1f}" cy="{y(km):.1f}" r="{6 if verified else 5.5}" '
            f'fill="{fill}" stroke="{colour}" data-event-id="{escape(r["event_id"])}" data-km="{km}" '
            f'data-verification="{status}" data-quality="{q}"><title>{escape(tip)}</title></circle>'
        )
    out.append("</svg>")
    return "".join(out)
