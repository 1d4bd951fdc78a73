"""``pcc chain up|down|status``: the local chain node the ledger deploys to."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.chain import node
from pipelines.cli.main import settings_from
from pipelines.errors import PccStateError

app = typer.Typer(
    help="Start and stop the local chain node (anvil, or the Hardhat 2 node).", no_args_is_help=True
)

KindOption = Annotated[
    str | None, typer.Option("--kind", help="anvil or hardhat (default: settings ledger.chain).")
]
PortOption = Annotated[
    int | None, typer.Option("--port", help="JSON-RPC port (default: settings ledger.port).")
]


def _kind(ctx: typer.Context, kind: str | None) -> str:
    chosen = kind or settings_from(ctx).ledger.chain
    if chosen not in node.KINDS:
        raise PccStateError(f"ledger.chain is {chosen!r}: only anvil and hardhat nodes are started locally")
    return chosen


@app.command()
def up(ctx: typer.Context, kind: KindOption = None, port: PortOption = None) -> None:
    """Start the node (installs it from npm on first use) and wait until it answers."""
    settings = settings_from(ctx)
    info = node.start(_kind(ctx, kind), port or settings.ledger.port, settings.path("chain"))
    typer.echo(f"{info.kind} running on {info.url} (pid {info.pid}, log {info.log})")


@app.command()
def down(ctx: typer.Context, kind: KindOption = None) -> None:
    """Stop the node."""
    chosen = _kind(ctx, kind)
    info = node.stop(settings_from(ctx).path("chain"), chosen)
    typer.echo(f"{chosen} stopped (pid {info.pid})" if info else f"{chosen} was not running")


@app.command()
def status(ctx: typer.Context, kind: KindOption = None) -> None:
    """Say whether the node runs and where."""
    chosen = _kind(ctx, kind)
    info = node.status(settings_from(ctx).path("chain"), chosen)
    if info is None:
        raise PccStateError(f"{chosen} is not running (start it with `pcc chain up`)")
    chain_id = node.rpc_chain_id(info.url)
    typer.echo(f"{info.kind} running on {info.url} (pid {info.pid}, chain id {chain_id})")
