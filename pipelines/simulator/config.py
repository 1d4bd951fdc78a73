"""What a simulated fleet looks like: the run parameters and the producers."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pipelines.errors import PccValueError

#: The fraud kinds the simulator injects (label ``kind``), plus ``noise`` for
#: honest data-quality errors (typos) that fraud evaluation treats separately.
FRAUD_KINDS: tuple[str, ...] = (
    "rollback_before_sale",
    "gradual_clocking",
    "wreck_back_on_road",
    "cloned_identity",
    "replay",
)
LABEL_KINDS: tuple[str, ...] = (*FRAUD_KINDS, "noise")


@dataclass(frozen=True, slots=True)
class Source:
    """A producer as registered in the SourceRegistry."""

    id: str
    kind: str  # connected_car | inspection_centre | garage | insurer | manual_entry
    tier: int  # 1 (best) .. 4
    in_network: bool  # garages of the maker's network; False for every other kind

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "kind": self.kind, "tier": self.tier, "in_network": self.in_network}


def _sources() -> tuple[Source, ...]:
    out = [Source(s, "connected_car", 1, False) for s in ("cc-aurora", "cc-borealis", "cc-cassini")]
    out += [
        Source(s, "inspection_centre", 1, False) for s in ("insp-dekra-07", "insp-tuv-02", "insp-applus-11")
    ]
    out += [Source(f"garage-net-{i:02d}", "garage", 2, True) for i in (1, 2, 3, 4)]
    out += [Source(s, "insurer", 2, False) for s in ("ins-mutua", "ins-allianz", "ins-generali")]
    out += [Source(f"garage-ind-{i:02d}", "garage", 3, False) for i in (5, 8, 12, 17, 21)]
    out += [Source("manual-portal", "manual_entry", 4, False)]
    return tuple(out)


#: Every producer of a simulated fleet (the table of docs/contracts.md, a few of each kind).
SOURCES: tuple[Source, ...] = _sources()
SOURCES_BY_ID: dict[str, Source] = {s.id: s for s in SOURCES}


def sources_of(kind: str, in_network: bool | None = None) -> tuple[str, ...]:
    return tuple(
        s.id for s in SOURCES if s.kind == kind and (in_network is None or s.in_network == in_network)
    )


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """Parameters of one simulated fleet; the same config always gives the same bytes."""

    vehicles: int = 100
    days: int = 365
    seed: int = 0
    start: dt.date = dt.date(2024, 1, 1)
    fraud_rate: float = 0.1  # share of vehicles with one injected fraud
    connected_share: float = 0.45  # share of vehicles with a connected-car operator
    typo_rate: float = 0.04  # share of manual odometer entries with a wrong digit

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.vehicles <= 33_000_000:
            problems.append(f"vehicles must be between 1 and 33,000,000, got {self.vehicles}")
        if not 1 <= self.days <= 20 * 366:
            problems.append(f"days must be between 1 and {20 * 366}, got {self.days}")
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        for name in ("fraud_rate", "connected_share", "typo_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be between 0 and 1, got {value}")
        if problems:
            raise PccValueError("invalid simulation: " + "; ".join(problems))

    @property
    def start_ms(self) -> int:
        return int(dt.datetime.combine(self.start, dt.time(), dt.UTC).timestamp() * 1000)

    def as_dict(self) -> dict[str, object]:
        return {
            "vehicles": self.vehicles,
            "days": self.days,
            "seed": self.seed,
            "start": self.start.isoformat(),
            "fraud_rate": self.fraud_rate,
            "connected_share": self.connected_share,
            "typo_rate": self.typo_rate,
        }
