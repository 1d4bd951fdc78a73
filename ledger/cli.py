"""``pcc ledger ...``: deploy the contracts and operate them (a few lines per command)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.cli.main import settings_from
from pipelines.errors import PccValueError

if TYPE_CHECKING:  # web3 and the contracts are imported by the commands that use them, not by --help
    from ledger.bulk import Registration
    from ledger.client import LedgerClient
    from ledger.deploy import Deployment

app = typer.Typer(help="Deploy and operate the ledger contracts.", no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (for scripts).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No table and no summary; errors only.")]


def _echo_json(value: object) -> None:
    import json

    typer.echo(json.dumps(value, indent=2))


def _client(ctx: typer.Context) -> LedgerClient:
    from ledger.client import LedgerClient

    return LedgerClient.from_settings(settings_from(ctx))


@app.command("deploy")
def deploy_cmd(
    ctx: typer.Context,
    member: Annotated[
        list[str] | None, typer.Option("--member", help="ADDRESS=AMOUNT of PCC_gold (whole tokens) to mint.")
    ] = None,
    timelock_delay: Annotated[
        int | None,
        typer.Option(help="Seconds an accepted proposal waits in the timelock before it runs (default 60)."),
    ] = None,
    withdrawal_delay: Annotated[
        int | None,
        typer.Option(
            help="Seconds a consumer's deposit stays reserved after it asks for it back (default 86400)."
        ),
    ] = None,
) -> None:
    """Deploy every contract to ledger.rpc_url and write the deployment manifest."""
    settings = settings_from(ctx)
    members: dict[str, int] = {}
    for item in member or []:
        address, _, amount = item.partition("=")
        if not amount.isdigit():
            raise PccValueError(f"--member {item!r}: expected ADDRESS=AMOUNT (whole PCC_gold tokens)")
        members[address] = int(amount) * 10**18
    from ledger.config import LedgerConfig
    from ledger.deploy import GovernanceParams
    from ledger.onboarding import deploy_consortium

    delays = {"timelock_delay_s": timelock_delay, "withdrawal_delay_s": withdrawal_delay}
    params = GovernanceParams(**{k: v for k, v in delays.items() if v is not None})
    deployment = deploy_consortium(settings, members, params)
    config = LedgerConfig.from_settings(settings)
    typer.echo(
        f"deployed to chain {deployment.chain_id} at block {deployment.block}; manifest {config.manifest}"
    )
    for name, address in deployment.contracts.items():
        typer.echo(f"  {name:15} {address}")
    typer.echo("the operator is admin of every contract until `pcc ledger handover`")


@app.command()
def handover(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Give every admin role to governance (the Governor's timelock); the operator renounces its own.

    Irreversible: afterwards only a proposal voted by PCC_gold holders can grant or revoke a role.
    """
    client = _client(ctx)
    if not yes:
        typer.confirm(
            f"hand every admin role of {client.signer.address} over to the timelock "
            f"{client.deployment.address('PCCTimelock')}? This cannot be undone",
            abort=True,
        )
    moved = client.governance.handover()
    typer.echo(
        f"handed over: {', '.join(moved)}" if moved else f"{client.signer.address} is admin of nothing"
    )
    _show_admins(client)


@app.command()
def status(ctx: typer.Context, as_json: Json = False) -> None:
    """Show the deployment, the head block, the PCC_token supply and who governs."""
    client = _client(ctx)
    d: Deployment = client.deployment
    if as_json:
        _echo_json(
            {
                "chain_id": d.chain_id, "deployed_block": d.block, "head_block": client.block_number,
                "operator": d.operator, "token_supply_cents": client.tokens.total_supply(),
                "contracts": dict(d.contracts), "handed_over": client.governance.handed_over(),
                "timelock_delay_s": client.governance.timelock_delay(),
            }
        )  # fmt: skip
        return
    typer.echo(f"chain {d.chain_id}, deployed at block {d.block}, head {client.block_number}")
    typer.echo(f"operator {d.operator}; PCC_token supply {client.tokens.total_supply()} cents")
    for name, address in d.contracts.items():
        typer.echo(f"  {name:15} {address}")
    handed = client.governance.handed_over()
    typer.echo(
        f"governance: {'handed over' if handed else 'the operator is still admin (pcc ledger handover)'}; "
        f"timelock delay {client.governance.timelock_delay()} s"
    )


def _show_admins(client: LedgerClient) -> None:
    for h in client.governance.admins():
        holders = [who for who, held in (("operator", h.operator), ("timelock", h.timelock)) if held]
        typer.echo(f"  {h.contract:15} admin: {', '.join(holders) or 'nobody'}")


@app.command("register-source")
def register_source(
    ctx: typer.Context,
    source_id: str,
    kind: Annotated[
        str, typer.Option(help="connected_car, garage, insurer, inspection_centre, manual_entry")
    ],
    tier: Annotated[int, typer.Option(help="quality tier, 1 best .. 4")] = 2,
    account: Annotated[str | None, typer.Option(help="the source's address (dev chains derive one)")] = None,
) -> None:
    """Register a producer; on a dev chain its anchoring account is derived and funded."""
    from ledger.onboarding import register_source as register_source_account

    account = register_source_account(settings_from(ctx), source_id, kind, tier, account)
    typer.echo(f"registered {source_id} ({kind}, tier {tier}) with account {account}")


@app.command("suspend-source")
def suspend_source(ctx: typer.Context, source_id: str, reinstate: bool = False) -> None:
    """Suspend a source (or reinstate it with --reinstate)."""
    _client(ctx).sources.set_active(source_id, reinstate)
    typer.echo(f"{source_id} {'reinstated' if reinstate else 'suspended'}")


@app.command()
def source(ctx: typer.Context, source_id: str, as_json: Json = False) -> None:
    """Show a source and its latest checkpoint."""
    client = _client(ctx)
    info = client.sources.get(source_id)
    latest = client.anchors.latest(source_id)
    if as_json:
        _echo_json(
            {
                "source_id": source_id, "kind": info.kind, "tier": info.tier, "active": info.active,
                "reputation_bps": info.reputation_bps, "account": info.account,
                "checkpoint": {"tree_size": latest[0], "root": latest[1].hex()} if latest else None,
            }
        )  # fmt: skip
        return
    typer.echo(
        f"{source_id}: {info.kind}, tier {info.tier}, {'active' if info.active else 'suspended'}, "
        f"reputation {info.reputation_bps / 100:.2f} %, account {info.account}"
    )
    typer.echo(
        f"latest checkpoint: size {latest[0]} root {latest[1].hex()}" if latest else "no checkpoint yet"
    )


@app.command()
def mint(ctx: typer.Context, to: str, cents: int, payment_ref: Annotated[str, typer.Option("--ref")]) -> None:
    """Mint PCC_token cents against a recorded euro deposit (treasury)."""
    client = _client(ctx)
    client.tokens.mint(to, cents, payment_ref)
    typer.echo(f"minted {cents} cents to {to}; balance {client.tokens.balance(to)} cents")


@app.command()
def balance(ctx: typer.Context, account: str, as_json: Json = False) -> None:
    """PCC_token balance (cents), Marketplace deposit, PCC_gold, revenue and sales credits of an account.

    A consumer's whole picture (allowance, reserved, asked back): `pcc market balance`."""
    client = _client(ctx)
    if as_json:
        _echo_json(
            {
                "account": account, "token_cents": client.tokens.balance(account),
                "deposit_cents": client.market.deposit_of(account),
                "gold_wei": client.tokens.gold_balance(account),
                "gold_revenue_claimable_cents": client.tokens.claimable(account),
                "sales_credit_cents": client.market.credit(account),
            }
        )  # fmt: skip
        return
    typer.echo(
        f"{account}: {client.tokens.balance(account)} cents PCC_token, "
        f"{client.market.deposit_of(account)} cents deposited on the Marketplace, "
        f"{client.tokens.gold_balance(account) / 10**18:g} PCC_gold, "
        f"{client.tokens.claimable(account)} cents PCC_gold revenue claimable, "
        f"{client.market.credit(account)} cents credited by sales"
    )


@app.command()
def checkpoints(
    ctx: typer.Context,
    from_block: Annotated[int | None, typer.Option("--from")] = None,
    to_block: Annotated[int | None, typer.Option("--to")] = None,
    source_id: Annotated[str | None, typer.Option("--source")] = None,
    as_json: Json = False,
) -> None:
    """List anchored checkpoints in a block range (by explicit eth_getLogs ranges)."""
    client = _client(ctx)
    from ledger.indexer import LedgerIndexer

    indexer = LedgerIndexer(client)
    names = indexer.source_ids()
    start = client.deployment.block if from_block is None else from_block
    rows = []
    for cp in indexer.checkpoints(start, to_block, source_id):
        name = names.get(cp.source_key, "0x" + cp.source_key.hex())
        if as_json:
            rows.append(
                {"block": cp.block, "source_id": name, "tree_size": cp.tree_size, "root": cp.root.hex()}
            )
        else:
            typer.echo(f"block {cp.block}: {name} size {cp.tree_size} root {cp.root.hex()}")
    if as_json:
        _echo_json(rows)


@app.command("register-sources")
def register_sources_cmd(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="CSV (source_id,kind[,tier][,account]) or a fleet.json.")],
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Register many producers in one process, in batched transactions; prints a table.

    With --json, one object per source on stdout instead; with --quiet, nothing but errors."""
    from pathlib import Path

    from ledger.bulk import read_sources, register_sources

    results = register_sources(settings_from(ctx), read_sources(Path(file)))
    statuses = ("registered", "already registered", "refused")
    counts = {s: sum(1 for r in results if r.status == s) for s in statuses}
    first_refused = next((r for r in results if r.status == "refused"), None)
    if as_json:
        _echo_json(
            [
                {
                    "source_id": r.row.source_id, "kind": r.row.kind, "tier": r.row.tier, "status": r.status,
                    "account": r.account or None, "block": r.block or None, "tx": r.tx_hash or None,
                    "reason": r.reason or None,
                }
                for r in results
            ]
        )  # fmt: skip
    elif not quiet:
        _print_registrations(file, results, counts)
    if first_refused is not None:
        raise PccValueError(
            f"{counts['refused']} source(s) refused, the first {first_refused.row.source_id}: "
            f"{first_refused.reason}"
        )


def _print_registrations(file: str, results: list[Registration], counts: dict[str, int]) -> None:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"pcc ledger register-sources {Path(file).name}")
    for column in ("source", "kind", "tier", "status", "account", "block", "tx / reason"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.row.source_id, r.row.kind, str(r.row.tier), r.status, r.account, str(r.block or ""),
            r.tx_hash or r.reason,
        )  # fmt: skip
    Console().print(table)
    typer.echo(", ".join(f"{n} {s}" for s, n in counts.items()))
