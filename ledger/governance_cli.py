"""``pcc governance ...``: PCC_gold holders' proposals, votes and the serving prices they set.

A change goes propose → vote → queue → execute through the PCCGovernor and its
PCCTimelock (see :mod:`ledger.governance`).  Votes count only if the member
delegated its PCC_gold (``pcc governance delegate``) before the proposal's
snapshot block.  On a development chain ``--advance`` mines the blocks of the
vote or moves the clock past the timelock's delay, so a whole change takes four
commands in a second.

A proposal is named by its id: the first hex digits ``pcc governance proposals``
shows are enough.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipelines.cli.main import settings_from
from pipelines.errors import PccConfigError, PccValueError

if TYPE_CHECKING:
    from ledger.client import LedgerClient
    from ledger.governance import Proposal

app = typer.Typer(help="Proposals, votes and the prices governance sets.", no_args_is_help=True)
prices_app = typer.Typer(
    help="Serving prices per data category (cents per row; per report).", no_args_is_help=True
)
app.add_typer(prices_app, name="prices")

KeyFile = Annotated[
    Path | None,
    typer.Option(
        "--key-file", help="File holding the member's hex private key (default: the operator's key)."
    ),
]
MemberKeyFile = Annotated[Path, typer.Option("--key-file", help="File holding the member's hex private key.")]
ProposalRef = Annotated[
    str, typer.Argument(help="The proposal's id, its first hex digits (at least 4), or 'latest'.")
]
Advance = Annotated[
    bool,
    typer.Option(
        "--advance", help="Dev chain only: mine blocks / move the clock until this step is allowed."
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]


def _client(ctx: typer.Context) -> LedgerClient:
    from ledger.client import LedgerClient

    return LedgerClient.from_settings(settings_from(ctx))


def _key(key_file: Path | None) -> str | None:
    if key_file is None:
        return None
    try:
        return key_file.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise PccConfigError(f"--key-file {key_file}: {exc.strerror}") from None


def _dev_only(ctx: typer.Context, advance: bool) -> None:
    if advance and settings_from(ctx).ledger.chain not in ("anvil", "hardhat", "evm"):
        raise PccValueError("--advance mines blocks and moves the clock: only on a development chain")


def _categories() -> tuple[str, ...]:
    from serving.market.chain import CATEGORIES

    return CATEGORIES


def describe_action(client: LedgerClient, target: str, data: bytes) -> str:
    """``Contract.function(args)`` of one proposal action, category keys named."""
    from eth_utils import keccak

    names = {addr.lower(): name for name, addr in client.deployment.contracts.items()}
    name = names.get(target.lower())
    if name is None:
        return f"call {target} with {len(data)} bytes"
    fn, args = client.contract(name).decode_function_input(data)
    by_key = {keccak(text=c): c for c in _categories()}
    shown = [
        by_key.get(bytes(v), "0x" + bytes(v).hex()) if isinstance(v, bytes) else str(v) for v in args.values()
    ]
    return f"{name}.{fn.fn_name}({', '.join(shown)})"


def _row(client: LedgerClient, p: Proposal) -> dict[str, Any]:
    gov = client.governance
    state = gov.state(p.proposal_id)
    tally = gov.tally(p)
    row: dict[str, Any] = {
        "id": f"0x{p.proposal_id:064x}",
        "state": state,
        "description": p.description,
        "proposer": p.proposer,
        "vote_start_block": p.vote_start,
        "vote_end_block": p.vote_end,
        "votes_for": tally.for_,
        "votes_against": tally.against,
        "votes_abstain": tally.abstain,
        "quorum": tally.quorum,
        "actions": [describe_action(client, t, d) for t, d in p.actions],
    }
    if state == "Queued":
        row["eta"] = gov.eta(p.proposal_id)
    return row


def _when(unix_s: int | None) -> str:
    from datetime import UTC, datetime

    return "?" if unix_s is None else datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _gold(amount: int | None) -> str:
    return "unknown until the snapshot" if amount is None else f"{amount / 10**18:g}"


@app.command()
def proposals(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Also executed, defeated and cancelled ones.")] = False,
    as_json: Json = False,
) -> None:
    """Proposals with their state, votes (PCC_gold) against the quorum, and what they would do."""
    client = _client(ctx)
    rows = [_row(client, p) for p in client.governance.proposals()]
    if not all_:
        rows = [r for r in rows if r["state"] in ("Pending", "Active", "Succeeded", "Queued")]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no open proposal" + ("" if all_ else " (--all shows the closed ones)"))
    head = client.block_number
    for r in rows:
        when = {
            "Pending": f"voting opens after block {r['vote_start_block']} (now {head})",
            "Active": f"voting until block {r['vote_end_block']} (now {head})",
            "Succeeded": "accepted: queue it",
            "Queued": f"may run from {_when(r.get('eta'))}",
        }.get(r["state"], "")
        typer.echo(f"{r['id'][2:14]}  {r['state']:9} {r['description']!r}  {when}")
        typer.echo(
            f"    for {_gold(r['votes_for'])}, against {_gold(r['votes_against'])}, "
            f"abstain {_gold(r['votes_abstain'])} PCC_gold; quorum {_gold(r['quorum'])}"
        )
        for action in r["actions"]:
            typer.echo(f"    {action}")


@app.command()
def delegate(
    ctx: typer.Context,
    key_file: MemberKeyFile,
    to: Annotated[
        str | None, typer.Option("--to", help="Delegate to this address (default: yourself).")
    ] = None,
) -> None:
    """Activate a member's PCC_gold votes (for proposals made after this)."""
    client = _client(ctx)
    key = _key(key_file)
    signer = client.signer_for(key)
    target = to or signer.address
    client.tokens.delegate(target, signer)
    typer.echo(
        f"{signer.address} delegates {_gold(client.tokens.gold_balance(signer.address))} PCC_gold votes to {target}"
    )


@app.command()
def vote(
    ctx: typer.Context,
    proposal: ProposalRef,
    support: Annotated[str, typer.Argument(help="for, against or abstain")],
    key_file: MemberKeyFile,
    advance: Advance = False,
) -> None:
    """Vote on an active proposal with the PCC_gold delegated to you at its snapshot."""
    _dev_only(ctx, advance)
    client = _client(ctx)
    p = client.governance.find(proposal)
    weight = client.governance.cast(p, support, _key(key_file), advance)
    tally = client.governance.tally(p)
    typer.echo(
        f"voted {support} on {p.short_id} with {_gold(weight)} PCC_gold; now for {_gold(tally.for_)}, "
        f"against {_gold(tally.against)}, abstain {_gold(tally.abstain)}; quorum {_gold(tally.quorum)}"
    )


@app.command()
def queue(
    ctx: typer.Context, proposal: ProposalRef, advance: Advance = False, key_file: KeyFile = None
) -> None:
    """Put an accepted proposal in the timelock (anyone may)."""
    _dev_only(ctx, advance)
    client = _client(ctx)
    p = client.governance.find(proposal)
    eta = client.governance.queue_proposal(p, advance, _key(key_file))
    typer.echo(
        f"queued {p.short_id}; it may run from {_when(eta)} (chain time) "
        f"(timelock delay {client.governance.timelock_delay()} s)"
    )


@app.command()
def execute(
    ctx: typer.Context, proposal: ProposalRef, advance: Advance = False, key_file: KeyFile = None
) -> None:
    """Run a queued proposal once the timelock's delay has passed (anyone may)."""
    _dev_only(ctx, advance)
    client = _client(ctx)
    p = client.governance.find(proposal)
    client.governance.execute_proposal(p, advance, _key(key_file))
    typer.echo(f"executed {p.short_id}: {p.description!r}")
    for t, d in p.actions:
        typer.echo(f"  {describe_action(client, t, d)}")


# -- prices ---------------------------------------------------------------------------------------------


def read_prices(client: LedgerClient) -> dict[str, int]:
    """Every known category's price in cents (0: not set, queries needing it are refused)."""
    from ledger.keys import category_key

    params = client.contract("Parameters")
    return {
        c: int(client.view(params.functions.pricePerCategory(category_key(c)), f"reading the price of {c}"))
        for c in _categories()
    }


@prices_app.command("show")
def prices_show(ctx: typer.Context, as_json: Json = False) -> None:
    """The prices in force, and the ones open proposals would set."""
    client = _client(ctx)
    prices = read_prices(client)
    if as_json:
        typer.echo(json.dumps(prices, indent=2))
        return
    unit = {"passport_report": "cents per report"}
    for category, cents in prices.items():
        shown = (
            f"{cents} {unit.get(category, 'cents per row')}" if cents else "not set (queries needing it: 503)"
        )
        typer.echo(f"{category:20} {shown}")
    open_ = [p for p in client.governance.proposals() if client.governance.state(p.proposal_id) in
             ("Pending", "Active", "Succeeded", "Queued")]  # fmt: skip
    for p in open_:
        typer.echo(f"proposal {p.short_id} ({client.governance.state(p.proposal_id)}) would set:")
        for t, d in p.actions:
            typer.echo(f"  {describe_action(client, t, d)}")


@prices_app.command("propose")
def prices_propose(
    ctx: typer.Context,
    prices: Annotated[list[str], typer.Argument(help="CATEGORY=CENTS, e.g. mileage=1 fraud_score=10.")],
    description: Annotated[
        str | None, typer.Option(help="What the proposal says (default: the prices).")
    ] = None,
    key_file: KeyFile = None,
) -> None:
    """Propose serving prices; members then vote, and anyone queues and executes it."""
    from ledger.keys import category_key

    known = _categories()
    wanted: dict[str, int] = {}
    for item in prices:
        category, _, cents = item.partition("=")
        if not cents.isdigit():
            raise PccValueError(f"{item!r}: expected CATEGORY=CENTS (whole cents)")
        if category not in known:
            raise PccValueError(f"unknown data category {category!r}: expected one of {', '.join(known)}")
        wanted[category] = int(cents)
    client = _client(ctx)
    gov = client.governance
    actions = [gov.call_data("Parameters", "setPrice", category_key(c), n) for c, n in wanted.items()]
    text = description or "Serving prices: " + ", ".join(f"{c}={n}" for c, n in wanted.items())
    pid = gov.propose(actions, text, _key(key_file))
    p = gov.find(f"{pid:064x}")
    typer.echo(f"proposed {p.short_id}: {text!r}")
    typer.echo(
        f"voting opens after block {p.vote_start} and ends at block {p.vote_end} (now {client.block_number}); "
        f"then: pcc governance vote {p.short_id} for --key-file MEMBER.key"
    )


prices_app.command("vote", help="Same as `pcc governance vote`.")(vote)
prices_app.command("queue", help="Same as `pcc governance queue`.")(queue)
prices_app.command("execute", help="Same as `pcc governance execute`.")(execute)
