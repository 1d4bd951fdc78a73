"""``pcc market ...``: receipts and their settlement, and a consumer's deposit (a few lines per command).

The receipts file is read read-only, so these commands work while ``pcc serve``
holds it.  A consumer pays only from its Marketplace deposit: ``deposit`` puts
cents in, ``request-withdrawal`` asks for them back and ``withdraw`` takes them
once the withdrawal delay (a governance parameter) has passed; until then they
stay reserved for the receipts the consumer was issued.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.cli.main import settings_from
from pipelines.errors import PccConfigError

app = typer.Typer(help="Receipts and their settlement; a consumer's deposit.", no_args_is_help=True)

KeyFile = Annotated[Path, typer.Option("--key-file", help="File holding the consumer's hex private key.")]


def _receipts_file(ctx: typer.Context) -> Path:
    from serving.config import ServingConfig

    return (
        ServingConfig.from_settings(settings_from(ctx)).state_dir / "receipts.sqlite"
    )  # as `pcc serve` keeps it


def _ledger(ctx: typer.Context) -> Any:
    from ledger.client import LedgerClient

    return LedgerClient.from_settings(settings_from(ctx))


def _key(key_file: Path) -> str:
    try:
        return key_file.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise PccConfigError(f"--key-file {key_file}: {exc.strerror}") from None


def _when(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@app.command()
def receipts(
    ctx: typer.Context,
    failed: Annotated[
        bool, typer.Option("--failed", help="List the receipts that did not settle, with the reason.")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most this many receipts, newest first.")] = 50,
) -> None:
    """Receipts of this service by settlement status; with --failed, those that did not settle and why."""
    from serving.market.receipts import read_failed_receipts, read_receipt_counts

    path = _receipts_file(ctx)
    if not failed:
        counts = read_receipt_counts(path)
        shown = [f"{n} {status} ({cents} cents)" for status, (n, cents) in sorted(counts.items())]
        typer.echo(f"{path}: " + (", ".join(shown) if shown else "no receipt"))
        return
    rows = read_failed_receipts(path, limit)
    if not rows:
        typer.echo("no failed receipt")
    for r in rows:
        typer.echo(
            f"receipt {r['receipt_no']}: {r['amount_cents']} cents of {r['consumer']}, failed {r['failed_at']}: "
            f"{r['reason']}"
            + (f" ({r['party']})" if r["party"] else "")
            + (f" in tx {r['tx']}" if r["tx"] else "")
        )


@app.command()
def funds(ctx: typer.Context, account: str) -> None:
    """A consumer's deposit, what new queries may use of it, and its withdrawal request."""
    market = _ledger(ctx).market
    typer.echo(
        f"{account}: {market.deposit_of(account)} cents deposited, {market.spendable(account)} spendable"
    )
    asked = market.withdrawal_of(account)
    if asked is not None:
        typer.echo(f"asked back: {asked.amount_cents} cents, from {_when(asked.ready_at)}")


@app.command()
def deposit(ctx: typer.Context, cents: int, key_file: KeyFile) -> None:
    """Deposit PCC_token cents on the Marketplace to pay for queries (approves it first)."""
    client = _ledger(ctx)
    key = _key(key_file)
    client.tokens.approve(client.market.address, cents, key)
    client.market.deposit(cents, key)
    account = client.signer_for(key).address
    typer.echo(f"deposited {cents} cents; {client.market.spendable(account)} spendable")


@app.command("request-withdrawal")
def request_withdrawal(ctx: typer.Context, cents: int, key_file: KeyFile) -> None:
    """Ask for deposited cents back; they stay reserved for your receipts until the delay has passed."""
    asked = _ledger(ctx).market.request_withdrawal(cents, _key(key_file))
    typer.echo(f"{asked.amount_cents} cents can be withdrawn from {_when(asked.ready_at)}")


@app.command("cancel-withdrawal")
def cancel_withdrawal(ctx: typer.Context, key_file: KeyFile) -> None:
    """Keep the whole deposit after all."""
    _ledger(ctx).market.cancel_withdrawal(_key(key_file))
    typer.echo("withdrawal request cancelled")


@app.command()
def withdraw(ctx: typer.Context, key_file: KeyFile) -> None:
    """Take back what was asked for, once the withdrawal delay has passed."""
    cents = _ledger(ctx).market.withdraw_deposit(_key(key_file))
    typer.echo(f"withdrew {cents} cents")
