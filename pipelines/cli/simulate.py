"""``pcc simulate``: write a simulated fleet (producer input, labels, fleet description)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pipelines.errors import PccValueError
from pipelines.simulator import FleetSummary, SimulationConfig, write_fleet


def simulate(
    vehicles: Annotated[int, typer.Option("--vehicles", help="Number of vehicles.")] = 100,
    days: Annotated[int, typer.Option("--days", help="Days simulated from --start.")] = 365,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("fleet"),
    start: Annotated[str, typer.Option("--start", help="First day, YYYY-MM-DD.")] = "2024-01-01",
    fraud_rate: Annotated[float, typer.Option("--fraud-rate", help="Share of vehicles with a fraud.")] = 0.1,
) -> None:
    """Simulate a fleet: DIR/events/<source_id>.jsonl, DIR/labels.jsonl, DIR/fleet.json."""
    try:
        first_day = dt.date.fromisoformat(start)
    except ValueError:
        raise PccValueError(f"--start: expected a date YYYY-MM-DD, got {start!r}") from None
    config = SimulationConfig(vehicles=vehicles, days=days, seed=seed, start=first_day, fraud_rate=fraud_rate)
    console = Console(stderr=True)
    began = time.perf_counter()
    columns = (
        TextColumn("vehicles"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[events]:,} events"),
    )
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as progress:
        task = progress.add_task("simulate", total=vehicles, events=0)
        written = 0

        def advance(n_events: int) -> None:
            nonlocal written
            written += n_events
            progress.update(task, advance=1, events=written)

        summary = write_fleet(config, out, on_vehicle=advance)
    _print_summary(Console(), summary, time.perf_counter() - began)


def _print_summary(console: Console, summary: FleetSummary, seconds: float) -> None:
    rate = summary.events / seconds if seconds > 0 else 0.0
    console.print(
        f"[bold]{summary.events:,}[/] events of {summary.vehicles:,} vehicles in {seconds:.1f} s "
        f"({rate:,.0f} events/s) -> {summary.out_dir}"
    )
    types = Table(title="Events per type")
    types.add_column("event_type")
    types.add_column("events", justify="right")
    for name, n in summary.by_type.most_common():
        types.add_row(name, f"{n:,}")
    sources = Table(title="Events per source")
    sources.add_column("source_id")
    sources.add_column("events", justify="right")
    for name, n in sorted(summary.by_source.items()):
        sources.add_row(name, f"{n:,}")
    labels = Table(title="Injected (labels.jsonl)")
    labels.add_column("kind")
    labels.add_column("instances", justify="right")
    for name, n in sorted(summary.labels.items()):
        labels.add_row(name, f"{n:,}")
    console.print(types, sources, labels)
