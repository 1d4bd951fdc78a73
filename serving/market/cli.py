"""``pcc market ...``: receipts and their settlement, and a consumer's deposit (a few lines per command).

The receipts file is read read-only, so these commands work while ``pcc serve``
holds it.  A consumer pays only from its Marketplace deposit: ``deposit`` puts
cents in, ``request-withdrawal`` asks for them back and ``withdraw`` takes them
once the withdrawal delay (a governance parameter) has passed; until then they
stay reserved for the receipts the consumer was issued.
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.cli.main import settings_from
from pipelines.errors import PccConfigError, PccPaymentRequiredError, PccStateError, PccValueError

app = typer.Typer(help="Receipts and their settlement; a consumer's deposit.", no_args_is_help=True)

KeyFile = Annotated[Path, typer.Option("--key-file", help="File holding the consumer's hex private key.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]


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


def _require_gas(client: Any, account: str, what: str) -> None:
    """Refuse before signing when ``account`` holds no ether for gas, saying where to get some."""
    if int(client.w3.eth.get_balance(account)) == 0:
        raise PccPaymentRequiredError(
            f"{account} holds no ETH to pay the gas of {what}: on a dev chain run "
            f"`pcc chain fund {account} --eth 1`; on a public chain send it a little ETH "
            "(docs/quickstart-consumer.md, 'Gas')"
        )


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
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Where to write the new hex private key (mode 0600).")],
) -> None:
    """Make a consumer key: the file signs queries and pays for them; prints its address."""
    from eth_account import Account

    if out.exists():
        raise PccValueError(f"--out {out} exists: not overwriting a key")
    account = Account.create()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write("0x" + bytes(account.key).hex() + "\n")
    typer.echo(account.address)


@app.command()
def approve(ctx: typer.Context, cents: int, key_file: KeyFile) -> None:
    """Allow the Marketplace to take up to CENTS of your PCC_token (what `deposit` then moves)."""
    client = _ledger(ctx)
    key = _key(key_file)
    account = client.signer_for(key).address
    _require_gas(client, account, "an approval")
    client.tokens.approve(client.market.address, cents, key)
    typer.echo(
        f"{account} allows the Marketplace {client.tokens.allowance(account, client.market.address)} cents"
    )


@app.command()
def deposit(ctx: typer.Context, cents: int, key_file: KeyFile) -> None:
    """Deposit PCC_token cents on the Marketplace to pay for queries (approves it first if needed)."""
    client = _ledger(ctx)
    key = _key(key_file)
    account = client.signer_for(key).address
    _require_gas(client, account, "a deposit")
    wallet = client.tokens.balance(account)
    if wallet < cents:
        raise PccPaymentRequiredError(
            f"{account} holds {wallet} cents of PCC_token, less than {cents}: the treasury mints against a "
            "euro payment (on a dev chain: pcc chain fund ADDRESS --pcc EUROS)"
        )
    if client.tokens.allowance(account, client.market.address) < cents:
        client.tokens.approve(client.market.address, cents, key)
    client.market.deposit(cents, key)
    typer.echo(f"deposited {cents} cents; {client.market.spendable(account)} spendable")


def _pending_here(ctx: typer.Context, account: str) -> int | None:
    """What this service's receipts file says ``account`` owes unsettled (None: no file here)."""
    path = _receipts_file(ctx)
    if not path.is_file():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute(
            "SELECT coalesce(sum(amount_cents), 0) FROM receipts WHERE consumer = ? AND settled_tx IS NULL",
            (account,),
        ).fetchone()
    finally:
        db.close()
    return int(row[0])


def _pending_at_service(ctx: typer.Context, key: str, url: str | None) -> int | None:
    """The unsettled receipts the service lists for the signing consumer (None: no service answers)."""
    import httpx

    from serving.client import PccClient

    settings = settings_from(ctx)
    base = url or f"http://{settings.serving.host}:{settings.serving.port}"
    try:
        with PccClient(base, key) as service:
            rows = service.receipts(limit=1000)
    except (httpx.HTTPError, OSError):
        return None
    return sum(int(r["amount_cents"]) for r in rows if r.get("settled_tx") is None)


@app.command()
def balance(
    ctx: typer.Context,
    account: Annotated[str | None, typer.Argument(help="The address (or give --key-file).")] = None,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="The consumer's key file (also asks the service).")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Service URL for unsettled receipts (default from settings).")
    ] = None,
    as_json: Json = False,
) -> None:
    """Wallet, gas, allowance, deposit, reserved by unsettled receipts, asked back, credits to claim."""
    client = _ledger(ctx)
    key = _key(key_file) if key_file else None
    if key is not None:
        account = client.signer_for(key).address
    if account is None:
        raise PccValueError("give an ADDRESS or --key-file")
    market, tokens = client.market, client.tokens
    pending = _pending_here(ctx, account)
    if pending is None and key is not None:
        pending = _pending_at_service(ctx, key, url)
    asked = market.withdrawal_of(account)
    doc: dict[str, Any] = {
        "account": account,
        "wallet_cents": tokens.balance(account),
        "gas_wei": int(client.w3.eth.get_balance(account)),
        "allowance_cents": tokens.allowance(account, market.address),
        "deposit_cents": market.deposit_of(account),
        "spendable_cents": market.spendable(account),
        "reserved_unsettled_cents": pending,
        "asked_back_cents": asked.amount_cents if asked else 0,
        "asked_back_ready_at": asked.ready_at if asked else None,
        "credits_to_claim_cents": market.credit(account),
        "revenue_to_claim_cents": tokens.claimable(account),
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    if pending is not None:
        reserved = f"{pending} cents by unsettled receipts"
    elif key is None:
        reserved = "unknown here: no receipts file (give --key-file to ask the service)"
    else:
        reserved = "unknown: no service answered (--url)"
    lines = [
        ("wallet", f"{doc['wallet_cents']} cents PCC_token"),
        ("gas", f"{doc['gas_wei'] / 10**18:g} ETH"),
        ("allowance", f"{doc['allowance_cents']} cents to the Marketplace {market.address}"),
        ("deposit", f"{doc['deposit_cents']} cents, {doc['spendable_cents']} spendable by new queries"),
        ("reserved", reserved),
        ("asked back", f"{asked.amount_cents} cents from {_when(asked.ready_at)}" if asked else "nothing"),
        ("to claim", f"{doc['credits_to_claim_cents']} cents of sales (pcc market claim), "
                     f"{doc['revenue_to_claim_cents']} cents of PCC_gold revenue"),
    ]  # fmt: skip
    typer.echo(account)
    for name, value in lines:
        typer.echo(f"  {name:11} {value}")


@app.command()
def claim(ctx: typer.Context, key_file: KeyFile) -> None:
    """A producer takes what settled queries credited it (and a member its PCC_gold revenue)."""
    client = _ledger(ctx)
    key = _key(key_file)
    account = client.signer_for(key).address
    _require_gas(client, account, "a claim")
    credit, revenue = client.market.credit(account), client.tokens.claimable(account)
    if not credit and not revenue:
        raise PccStateError(f"{account} has nothing to claim")
    if credit:
        client.market.withdraw(key)
    if revenue:
        client.tokens.claim(key)
    typer.echo(
        f"claimed {credit} cents of sales and {revenue} cents of revenue; wallet {client.tokens.balance(account)} cents"
    )


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
