"""The fleet: stream every vehicle's events, or write them as one JSON Lines file per source."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from pipelines.errors import PccValueError
from pipelines.simulator.config import SOURCES, SimulationConfig
from pipelines.simulator.frauds import choose_fraud, finish, inject
from pipelines.simulator.life import Life

Event = dict[str, object]


def vehicle(config: SimulationConfig, index: int) -> tuple[list[Event], list[Event]]:
    """Events (time order, then replays) and labels of vehicle ``index`` of the fleet."""
    life = Life(config, index)
    kind = choose_fraud(life)
    life.generate()
    if kind is not None:
        inject(life, kind)
        finish(life)
    return life.render()


def simulate(config: SimulationConfig) -> Iterator[Event]:
    """Every event of the fleet, vehicle after vehicle (producer input, see docs/simulator.md)."""
    for index in range(config.vehicles):
        events, _ = vehicle(config, index)
        yield from events


@dataclass
class FleetSummary:
    """What :func:`write_fleet` wrote."""

    out_dir: Path
    vehicles: int
    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)


def write_fleet(
    config: SimulationConfig,
    out_dir: str | Path,
    on_vehicle: Callable[[int], None] | None = None,
) -> FleetSummary:
    """Write ``events/<source_id>.jsonl``, ``labels.jsonl`` and ``fleet.json`` under ``out_dir``.

    Memory stays flat in the number of vehicles: each vehicle is generated,
    written and dropped.  ``on_vehicle(n_events)`` is called after each vehicle.
    """
    out = Path(out_dir)
    events_dir = out / "events"
    try:
        events_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PccValueError(f"cannot create the output directory {events_dir}: {exc.strerror}") from None
    stale = [p.name for p in events_dir.glob("*.jsonl") if p.stem not in {s.id for s in SOURCES}]
    if stale:
        raise PccValueError(
            f"{events_dir} holds files of another fleet ({', '.join(sorted(stale))}); use an empty directory"
        )
    summary = FleetSummary(out, config.vehicles)
    files = {s.id: (events_dir / f"{s.id}.jsonl").open("wb") for s in SOURCES}
    try:
        with (out / "labels.jsonl").open("wb") as labels_file:
            for index in range(config.vehicles):
                events, labels = vehicle(config, index)
                for event in events:
                    source = str(event["source_id"])
                    files[source].write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
                    summary.by_source[source] += 1
                    summary.by_type[str(event["event_type"])] += 1
                for label in labels:
                    labels_file.write(orjson.dumps(label, option=orjson.OPT_APPEND_NEWLINE))
                    summary.labels[str(label["kind"])] += 1
                summary.events += len(events)
                if on_vehicle is not None:
                    on_vehicle(len(events))
    finally:
        for f in files.values():
            f.close()
    fleet = {
        **config.as_dict(),
        "sources": [s.as_dict() for s in SOURCES],
        "events": summary.events,
        "labels": dict(sorted(summary.labels.items())),
    }
    (out / "fleet.json").write_text(json.dumps(fleet, indent=2) + "\n", encoding="utf-8")
    return summary
