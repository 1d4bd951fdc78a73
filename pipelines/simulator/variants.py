"""How each fraud case is drawn: its variant, decided before the car's life is generated.

The rules must not be able to count on one shape of fraud, so every case draws
its own: whether the car is connected, how often it is read and by whom, and
the kind's own dimensions (a clone's region, cadence, odometer and sources; a
clocking's share, start and reporter; a rollback's drop, timing and whether any
reading predates it).  :data:`VARIANT_FAMILIES` lists every dimension and its
values; the label of each case records the values drawn (``variant``) and
whether the data on record can show the fraud at all (``detectable``, decided
by :mod:`pipelines.simulator.frauds` once the life is drawn).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.simulator.life import IND_GARAGES, MANUAL, NET_GARAGES, Life

#: Days between readings of a cadence (the reporter's regular readings; ``daily`` = telematics).
CADENCE_DAYS: dict[str, int] = {"daily": 1, "weekly": 7, "monthly": 30, "bimonthly": 61, "quarterly": 91}

#: Every variant dimension of every fraud kind and the values it takes.
VARIANT_FAMILIES: dict[str, dict[str, tuple[str, ...]]] = {
    "rollback_before_sale": {
        "connected": ("yes", "no"),
        "cadence": ("daily", "weekly", "monthly", "bimonthly", "quarterly"),
        "reporter": ("telematics", "owner", "garage"),
        "drop": ("small", "large"),  # 5-15 % (at least 2,000 km) / 30-60 % of the true reading
        "timing": ("days", "weeks", "months"),  # 3-30 / 30-90 / 90-240 days before the sale
        "history": ("on_record", "none"),  # an honest reading before the wind-back, or none
    },
    "gradual_clocking": {
        "connected": ("yes", "no"),
        "cadence": ("daily", "weekly", "monthly", "bimonthly", "quarterly"),
        "reporter": ("telematics", "owner", "garage"),
        "share": ("20-40%", "40-60%", "60-80%"),  # of the distance driven that the odometer shows
        "start": ("early", "mid", "late"),  # 20-35 / 35-55 / 55-75 % into the simulated window
    },
    "wreck_back_on_road": {
        "connected": ("yes", "no"),
        "cadence": ("daily", "weekly", "monthly", "bimonthly", "quarterly"),
    },
    "cloned_identity": {
        "connected": ("yes", "no"),  # the real car ...
        "cadence": ("daily", "weekly", "monthly", "bimonthly", "quarterly"),  # ... how often it is read
        "reporter": ("telematics", "owner", "garage"),  # ... and by whom
        "region": ("near", "mid", "far"),  # the twin 100-300 / 300-800 / 800-2,000 km away
        "twin_cadence": ("daily", "weekly", "six_weekly", "quarterly"),
        "twin_odometer": ("below", "near", "above"),  # 50-85 % / 90-110 % / 115-150 % of the real one
        "twin_sources": ("telematics", "garage", "inspection", "manual", "mixed"),
    },
    "replay": {"copies": ("1", "2", "3")},
}

#: Days between a clone's readings per ``twin_cadence``.
TWIN_CADENCE_DAYS: dict[str, int] = {"daily": 1, "weekly": 7, "six_weekly": 42, "quarterly": 91}


def _pick(life: Life, values: Sequence[str], p: Sequence[float] | None = None) -> str:
    return values[int(life.rng.choice(len(values), p=p))]


def _reading_habit(life: Life, variant: dict[str, str], connected_p: float) -> None:
    """Connected (telematics every day) or read at a cadence by the owner or a garage."""
    connected = bool(life.rng.random() < connected_p)
    life.connected = connected
    variant["connected"] = "yes" if connected else "no"
    if connected:
        variant["cadence"], variant["reporter"] = "daily", "telematics"
        return
    reporter = _pick(life, ("owner", "garage"))
    cadences = ("weekly", "monthly", "bimonthly", "quarterly") if reporter == "owner" else (
        "monthly", "bimonthly", "quarterly")  # fmt: skip
    cadence = _pick(life, cadences)
    variant["cadence"], variant["reporter"] = cadence, reporter
    life.manual_user = False  # the reporter's readings replace the owner's occasional ones
    life.reporter = MANUAL if reporter == "owner" else _pick(life, (*IND_GARAGES, *NET_GARAGES))
    life.reporter_every = CADENCE_DAYS[cadence]


def draw_variant(life: Life, kind: str) -> dict[str, str]:
    """Draw the variant of a ``kind`` case and set up the honest life accordingly (before it is generated)."""
    variant: dict[str, str] = {}
    if kind == "rollback_before_sale":
        _reading_habit(life, variant, 0.35)
        variant["drop"] = _pick(life, ("small", "large"))
        variant["timing"] = _pick(life, ("days", "weeks", "months"), (0.5, 0.3, 0.2))
        variant["history"] = _pick(life, ("on_record", "none"), (0.85, 0.15))
    elif kind == "gradual_clocking":
        _reading_habit(life, variant, 0.3)
        share = float(life.rng.uniform(0.2, 0.8))
        variant["share"] = "20-40%" if share < 0.4 else "40-60%" if share < 0.6 else "60-80%"
        variant["start"] = _pick(life, ("early", "mid", "late"))
        life.variant_values["share"] = share
    elif kind == "wreck_back_on_road":
        _reading_habit(life, variant, 0.45)
        variant.pop("reporter")
    elif kind == "cloned_identity":
        _reading_habit(life, variant, 0.5)  # the real car
        variant["region"] = _pick(life, ("near", "mid", "far"))
        variant["twin_cadence"] = _pick(
            life, ("daily", "weekly", "six_weekly", "quarterly"), (0.2, 0.25, 0.35, 0.2)
        )
        variant["twin_odometer"] = _pick(life, ("below", "near", "above"))
        variant["twin_sources"] = (
            "telematics"
            if variant["twin_cadence"] == "daily"
            else _pick(life, ("garage", "inspection", "manual", "mixed"))
        )
    elif kind == "replay":
        variant["copies"] = str(int(life.rng.integers(1, 4)))
    return variant
