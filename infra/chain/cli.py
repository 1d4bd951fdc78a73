"""``pcc chain up|down|status|fund``: the local chain node the ledger deploys to.

The node listens on the port of ``ledger.rpc_url`` (the one setting for the chain
endpoint), so ``PCC__LEDGER__RPC_URL=http://127.0.0.1:8601 pcc chain up`` and every
``pcc ledger`` command then agree.  ``fund`` hands play money from the node's funded
development accounts to a new account.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from infra.chain import node
from pipelines.cli.main import settings_from
from pipelines.errors import PccConfigError, PccStateError, PccValueError

app = typer.Typer(
    help="Start and stop the local chain node (anvil, or the Hardhat 2 node).", no_args_is_help=True
)

KindOption = Annotated[
    str | None, typer.Option("--kind", help="anvil or hardhat (default: settings ledger.chain).")
]
#: the funded development account that pays `pcc chain fund` (not the operator's, whose nonces it would race)
FAUCET_ACCOUNT = 9
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def _kind(ctx: typer.Context, kind: str | None) -> str:
    chosen = kind or settings_from(ctx).ledger.chain
    if chosen not in node.KINDS:
        raise PccStateError(f"ledger.chain is {chosen!r}: only anvil and hardhat nodes are started locally")
    return chosen


@app.command()
def up(ctx: typer.Context, kind: KindOption = None) -> None:
    """Start the node on the port of ledger.rpc_url (installs it from npm on first use)."""
    settings = settings_from(ctx)
    port = node.local_port(settings.ledger.rpc_url)
    info = node.start(_kind(ctx, kind), port, settings.path("chain"))
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


@app.command()
def fund(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="The account to fund, or a file holding its private key.")],
    eth: Annotated[float, typer.Option("--eth", help="Ether for gas, from a funded dev account.")] = 1.0,
    pcc: Annotated[
        int, typer.Option("--pcc", help="PCC_token in whole euros (100 cents each), minted by the treasury.")
    ] = 0,
) -> None:
    """Dev chain only: give an account gas money and PCC_token, so a new consumer starts in one command."""
    settings = settings_from(ctx)
    if settings.ledger.chain not in node.KINDS:
        raise PccStateError(
            f"ledger.chain is {settings.ledger.chain!r}: `pcc chain fund` hands out play money on a local "
            "anvil or hardhat node only; on a public chain, buy ETH and pay the treasury in euros"
        )
    if eth < 0 or pcc < 0:
        raise PccValueError("--eth and --pcc must not be negative")
    target = _address(address)
    from ledger.chain import connect_url
    from ledger.config import DEV_KEYS
    from ledger.tx import Signer

    w3 = connect_url(settings.ledger.rpc_url)
    if w3.eth.chain_id != node.CHAIN_ID:
        raise PccStateError(
            f"the node at {settings.ledger.rpc_url} is chain {w3.eth.chain_id}, not a dev chain ({node.CHAIN_ID})"
        )
    if eth:
        Signer(w3, DEV_KEYS[FAUCET_ACCOUNT]).transfer_eth(target, int(eth * 10**18))
    wallet = ""
    if pcc:
        import time

        from ledger.client import LedgerClient

        tokens = LedgerClient.from_settings(settings, w3).tokens  # the operator holds the treasury role
        tokens.mint(target, pcc * 100, f"dev-faucet-{target}-{time.time_ns()}")
        wallet = f", {tokens.balance(target)} cents PCC_token"
    typer.echo(f"{target}: {w3.eth.get_balance(w3.to_checksum_address(target)) / 10**18:g} ETH{wallet}")


def _address(text: str) -> str:
    if ADDRESS.fullmatch(text):
        from web3 import Web3

        return str(Web3.to_checksum_address(text))
    path = Path(text)
    if not path.is_file():
        raise PccValueError(f"{text!r} is neither an address (0x + 40 hex digits) nor a key file")
    from eth_account import Account

    try:
        return str(Account.from_key(path.read_text(encoding="ascii").strip()).address)
    except ValueError:
        raise PccConfigError(f"{path} does not hold a hex private key") from None
