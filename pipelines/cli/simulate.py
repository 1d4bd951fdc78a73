"""``pcc simulate``: write a simulated fleet (producer input, labels, fleet description)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipelines.errors import PccValueError

if TYPE_CHECKING:  # the simulator (numpy) and rich are loaded when the command runs
    from rich.console import Console

    from pipelines.simulator import FleetSummary


def simulate(
    vehicles: Annotated[int, typer.Option("--vehicles", help="Number of vehicles.")] = 100,
    days: Annotated[int, typer.Option("--days", help="Days simulated from --start.")] = 365,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("fleet"),
    start: Annotated[str, typer.Option("--start", help="First day, YYYY-MM-DD.")] = "2024-01-01",
    fraud_rate: Annotated[float, typer.Option("--fraud-rate", help="Share of vehicles with a fraud.")] = 0.1,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress and no tables; errors only.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout (no tables).")
    ] = False,
) -> None:
    """Simulate a fleet: DIR/events/<source_id>.jsonl, DIR/labels.jsonl, DIR/fleet.json.

    On a terminal a progress bar; otherwise a progress line every 10 s (vehicles done, left, rate)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pipelines.cli.progress import LineProgress
    from pipelines.simulator import SimulationConfig, write_fleet

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
    progress: Any
    if quiet:
        progress = contextlib.nullcontext(None)
    elif console.is_terminal:
        progress = Progress(*columns, TimeRemainingColumn(), console=console, transient=True)
    else:  # a file or a pipe: a line every 10 s instead of a bar nobody sees
        progress = LineProgress("pcc simulate", total=vehicles)
    with progress as shown:
        task = shown.add_task("vehicles", total=vehicles, events=0) if shown is not None else None
        done = written = 0

        def advance(n_events: int) -> None:
            nonlocal done, written
            done += 1
            written += n_events
            if shown is not None:
                shown.update(
                    task, completed=done, events=written, description=f"vehicles ({written:,} events)"
                )

        summary = write_fleet(config, out, on_vehicle=advance)
    seconds = time.perf_counter() - began
    if as_json:
        typer.echo(json.dumps(_summary_dict(summary, seconds), indent=2))
    elif not quiet:
        _print_summary(Console(), summary, seconds)


def _summary_dict(summary: FleetSummary, seconds: float) -> dict[str, Any]:
    return {
        "out_dir": str(summary.out_dir), "vehicles": summary.vehicles, "events": summary.events,
        "elapsed_s": round(seconds, 3), "by_type": dict(summary.by_type.most_common()),
        "by_source": dict(sorted(summary.by_source.items())), "labels": dict(sorted(summary.labels.items())),
    }  # fmt: skip


def _print_summary(console: Console, summary: FleetSummary, seconds: float) -> None:
    from rich.table import Table

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
