"""``pcc kafka up|down|status|topics``: the local broker (or local cluster) from the command line.

A home with a ``cluster.json`` is a cluster's (``pcc kafka up --brokers 3``): every
command then acts on all its nodes and talks to them through all their addresses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from infra import kafka
from pipelines.cli.main import settings_from

if TYPE_CHECKING:
    from infra.kafka.cluster import Cluster
    from pipelines.settings import Settings

app = typer.Typer(
    help="The local Kafka broker (KRaft, one node; --brokers 3 for a cluster) and the platform's topics.",
    no_args_is_help=True,
)
console = Console()


@app.command()
def up(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker to answer.")] = 120.0,
    brokers: Annotated[
        int | None,
        typer.Option(
            help="Nodes: 1 (the default) or a local cluster of 2-9 on ports stepping by 2 from the "
            "bootstrap and controller ports (3: replication factor 3, min.insync.replicas=2)."
        ),
    ] = None,
) -> None:
    """Start the broker (fetching its jars on first use) and create the topics."""
    settings = settings_from(ctx)
    if (brokers or 1) > 1 or (brokers is None and kafka.Cluster.load(settings) is not None):
        _cluster_up(kafka.Cluster.load(settings) or kafka.Cluster.create(settings, brokers or 1), timeout)
        return
    if kafka.Cluster.load(settings) is not None:
        raise typer.BadParameter(
            f"{kafka.Cluster.layout_file(settings)}: this home holds a cluster; `pcc kafka down` and use "
            "another kafka.home for a single broker",
            param_hint="--brokers",
        )
    broker = kafka.Broker(settings)
    with console.status("checking the Kafka broker ...") as spinner:
        result = broker.start(wait=True, timeout=timeout, progress=lambda msg: spinner.update(msg + " ..."))
        spinner.update("creating the topics ...")
        created = kafka.ensure_topics(settings)
    for note in result.notes:
        console.print(f"[yellow]{note}[/]")
    if not result.already_running:
        console.print(
            f"[green]Kafka broker up[/] at {broker.bootstrap} (pid {result.status.pid}) "
            f"in {result.seconds:.1f}s" + (" - storage formatted" if result.formatted else "")
        )
    console.print(f"log: {broker.paths.server_log}")
    console.print(f"topics created: {', '.join(created)}" if created else "topics: all present")


def _cluster_up(cluster: Cluster, timeout: float) -> None:
    with console.status("checking the Kafka cluster ...") as spinner:
        result = cluster.start(wait=True, timeout=timeout, progress=lambda msg: spinner.update(msg + " ..."))
        spinner.update("creating the topics ...")
        created = kafka.ensure_topics(cluster.client_settings)
    for note in result.notes:
        console.print(f"[yellow]{note}[/]")
    state = "already running" if result.already_running else f"up in {result.seconds:.1f}s"
    console.print(f"[green]Kafka cluster of {len(cluster.nodes)} brokers {state}[/] at {cluster.bootstrap}")
    console.print(f"clients: PCC__KAFKA__BOOTSTRAP={cluster.bootstrap}  (logs: {cluster.home}/node-*/logs)")
    console.print(f"topics created: {', '.join(created)}" if created else "topics: all present")


@app.command()
def down(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(help="Seconds to wait before killing it.")] = 30.0,
) -> None:
    """Stop the broker (SIGTERM, then SIGKILL after --timeout), or every node of the cluster."""
    cluster = kafka.Cluster.load(settings_from(ctx))
    if cluster is not None:
        with console.status("stopping the Kafka cluster ..."):
            stopped = cluster.stop(timeout=timeout)
        console.print("Kafka cluster stopped" if stopped else "the Kafka cluster was not running")
        return
    broker = kafka.Broker(settings_from(ctx))
    with console.status("stopping the Kafka broker ..."):
        stopped = broker.stop(timeout=timeout)
    console.print("Kafka broker stopped" if stopped else "the Kafka broker was not running")


@app.command()
def status(ctx: typer.Context) -> None:
    """Pid, address, the topics with their partitions and end offsets, each partition's leader and ISR."""
    settings = settings_from(ctx)
    cluster = kafka.Cluster.load(settings)
    if cluster is not None:
        _cluster_status(cluster)
        return
    broker = kafka.Broker(settings)
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
        _print_partitions(settings)


def _cluster_status(cluster: Cluster) -> None:
    table = Table("node", "address", "controller", "pid", "state", "log")
    for node, st in cluster.status():
        state = "[green]ready[/]" if st.ready else "[yellow]starting[/]" if st.running else "[red]down[/]"
        pid = str(st.pid) if st.pid is not None else (f"stale {st.stale_pid}" if st.stale_pid else "-")
        table.add_row(
            str(node.node_id), st.bootstrap, str(node.controller_port), pid, state, str(st.log_file)
        )
    console.print(table)
    if any(st.ready for _, st in cluster.status()):
        _print_topics(cluster.client_settings)
        _print_partitions(cluster.client_settings)


def _print_partitions(settings: Settings) -> None:
    table = Table("topic", "partition", "leader", "replicas", "in sync (ISR)")
    for p in kafka.describe_partitions(settings):
        isr = ",".join(map(str, p.isr))
        table.add_row(
            p.topic,
            str(p.partition),
            str(p.leader) if p.leader is not None else "[red]none[/]",
            ",".join(map(str, p.replicas)),
            f"[yellow]{isr}[/]" if p.under_replicated else isr,
        )
    console.print(table)


@app.command()
def topics(ctx: typer.Context) -> None:
    """Create the platform's topics that are missing, then list them."""
    settings = settings_from(ctx)
    cluster = kafka.Cluster.load(settings)
    settings = cluster.client_settings if cluster is not None else settings
    created = kafka.ensure_topics(settings)
    if created:
        console.print(f"created: {', '.join(created)}")
    _print_topics(settings)


def _print_topics(settings: Settings) -> None:
    infos = {t.name: t for t in kafka.describe_topics(settings)}
    table = Table("topic", "partitions", "end offsets", "messages")
    for spec in kafka.topic_specs(settings):
        info = infos.get(spec.name)
        if info is None:
            table.add_row(spec.name, "[red]missing[/]", "", "")
            continue
        offsets = " ".join(f"{p}:{o}" for p, o in info.end_offsets.items())
        table.add_row(info.name, str(info.partitions), offsets, str(info.messages))
    console.print(table)
