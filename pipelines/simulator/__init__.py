"""The fleet simulator: realistic vehicle lives, honest noise and labelled frauds.

``simulate(config)`` streams producer-input events; ``write_fleet(config, dir)``
writes them as one JSON Lines file per source plus the ground-truth labels.
See docs/simulator.md.
"""

from pipelines.simulator.config import FRAUD_KINDS, LABEL_KINDS, SOURCES, SimulationConfig, Source
from pipelines.simulator.fleet import FleetSummary, simulate, vehicle, write_fleet

__all__ = [
    "FRAUD_KINDS",
    "LABEL_KINDS",
    "SOURCES",
    "FleetSummary",
    "SimulationConfig",
    "Source",
    "simulate",
    "vehicle",
    "write_fleet",
]
