"""``pcc kafka up|down|status|topics``: the local broker from the command line."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infra.kafka.broker import Broker
from infra.kafka.topics import describe_topics, ensure_topics, topic_specs
from pipelines.cli.main import settings_from
from pipelines.settings import Settings

app = typer.Typer(
    help="The local Kafka broker (KRaft, one node) and the platform's topics.", no_args_is_help=True
)
console = Console()


@app.command()
def up(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker to answer.")] = 120.0,
) -> None:
    """Start the broker (fetching its jars on first use) and create the topics."""
    settings = settings_from(ctx)
    broker = Broker(settings)
    with console.status("checking the Kafka broker ...") as spinner:
        result = broker.start(wait=True, timeout=timeout, progress=lambda msg: spinner.update(msg + " ..."))
        spinner.update("creating the topics ...")
        created = ensure_topics(settings)
    for note in result.notes:
        console.print(f"[yellow]{note}[/]")
    if not result.already_running:
        console.print(
            f"[green]Kafka broker up[/] at {broker.bootstrap} (pid {result.status.pid}) "
            f"in {result.seconds:.1f}s" + (" - storage formatted" if result.formatted else "")
        )
    console.print(f"log: {broker.paths.server_log}")
    console.print(f"topics created: {', '.join(created)}" if created else "topics: all present")


@app.command()
def down(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(help="Seconds to wait before killing it.")] = 30.0,
) -> None:
    """Stop the broker (SIGTERM, then SIGKILL after --timeout)."""
    broker = Broker(settings_from(ctx))
    with console.status("stopping the Kafka broker ..."):
        stopped = broker.stop(timeout=timeout)
    console.print("Kafka broker stopped" if stopped else "the Kafka broker was not running")


@app.command()
def status(ctx: typer.Context) -> None:
    """Pid, address, and the topics with their partitions and end offsets."""
    settings = settings_from(ctx)
    broker = Broker(settings)
    st = broker.status()
    if st.running:
        state = "[green]ready[/]" if st.ready else "[yellow]starting (not answering yet)[/]"
        console.print(f"Kafka broker {state}: pid {st.pid}, {st.bootstrap}")
    elif st.ready:
        console.print(f"[green]a Kafka broker answers[/] at {st.bootstrap} (not started by pcc)")
    else:
        console.print(f"[red]no Kafka broker[/] at {st.bootstrap}")
    if st.stale_pid is not None:
        console.print(
            f"[yellow]stale PID file {broker.paths.pid_file} (pid {st.stale_pid} is not running)[/]"
        )
    console.print(f"log: {st.log_file}")
    if st.ready:
        _print_topics(settings)


@app.command()
def topics(ctx: typer.Context) -> None:
    """Create the platform's topics that are missing, then list them."""
    settings = settings_from(ctx)
    created = ensure_topics(settings)
    if created:
        console.print(f"created: {', '.join(created)}")
    _print_topics(settings)


def _print_topics(settings: Settings) -> None:
    infos = {t.name: t for t in describe_topics(settings)}
    table = Table("topic", "partitions", "end offsets", "messages")
    for spec in topic_specs(settings):
        info = infos.get(spec.name)
        if info is None:
            table.add_row(spec.name, "[red]missing[/]", "", "")
            continue
        offsets = " ".join(f"{p}:{o}" for p, o in info.end_offsets.items())
        table.add_row(info.name, str(info.partitions), offsets, str(info.messages))
    console.print(table)
