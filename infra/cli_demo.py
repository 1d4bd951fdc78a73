"""``pcc demo``: the main job end to end on a fresh stack of its own; ``pcc demo down`` stops a kept one."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    help="The platform's main job end to end: simulate, produce, speed, batch, serve, pay.",
    invoke_without_command=True,
)


@app.callback()
def demo_command(
    ctx: typer.Context,
    vehicles: Annotated[int, typer.Option(help="Vehicles in the simulated fleet.")] = 2000,
    days: Annotated[int, typer.Option(help="Days of life simulated.")] = 730,
    seed: Annotated[int, typer.Option(help="Seed of the simulation.")] = 1,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Leave the broker, chain node and serving API up.")
    ] = False,
) -> None:
    """Run the demo under <data_dir>/demo (wiped first) on free ports; stop everything at the end."""
    if ctx.invoked_subcommand is not None:
        return
    import logging

    from rich.console import Console

    from infra import demo_stack as stack
    from infra.demo import DemoOptions, run_demo
    from infra.demo_report import print_summary
    from pipelines.cli.main import settings_from

    # The Kafka client warns whenever a busy 2-core machine delays its I/O loop; the demo's
    # own progress says what matters. Errors still show.
    logging.getLogger("kafka").setLevel(logging.ERROR)

    console = Console(stderr=True)
    if not console.is_terminal:  # a log file or CI: tables whole, not folded into 80 columns
        console = Console(stderr=True, width=120)
    base = settings_from(ctx)
    demo_dir = (base.data_dir / "demo").resolve()
    for what in stack.reset_dir(demo_dir):
        console.print(f"stopped the previous demo's {what}")
    settings = stack.demo_settings(base, demo_dir)
    options = DemoOptions(vehicles=vehicles, days=days, seed=seed, keep_running=keep_running)
    console.print(
        f"PCC demo: {vehicles:,} vehicles over {days} days (seed {seed}) in {demo_dir}; "
        f"Kafka {settings.kafka.bootstrap}, chain {settings.ledger.rpc_url}"
    )
    result = run_demo(settings, options, console=console)
    print_summary(result, console)
    console.print(f"chart: {result.chart}")
    if result.kept_running:
        config = demo_dir / stack.CONFIG_NAME
        console.print(
            f"[bold]still running[/]: Kafka {settings.kafka.bootstrap}, chain {settings.ledger.rpc_url}, "
            f"serving API {result.api_url}\n"
            f"passport of a flagged car (the owner's share link, 7 days): {result.share_url}\n"
            f"buy its report: pcc --config {config} passport buy --key-file {demo_dir / 'consumer.key'} "
            f"{result.flagged_vehicle}\n"
            f"query it: pcc --config {config} query --key-file {demo_dir / 'consumer.key'} "
            f"\"SELECT * FROM fraud_scores WHERE label <> 'clean'\"\n"
            f"stop it: make down (or pcc demo down)"
        )
    else:
        console.print(
            f"passport of a flagged car (the owner's share link; with --keep-running or make up): "
            f"{result.share_url}"
        )


@app.command("down")
def down(ctx: typer.Context) -> None:
    """Stop what ``pcc demo --keep-running`` left running."""
    from infra import demo_stack as stack
    from pipelines.cli.main import settings_from

    demo_dir = (settings_from(ctx).data_dir / "demo").resolve()
    stopped = stack.stop_demo_dir(demo_dir)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else f"nothing of a demo runs under {demo_dir}")
