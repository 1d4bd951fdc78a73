"""``pcc serve`` and ``pcc query``: a few lines each over the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.errors import PccConfigError, PccTransientError

if TYPE_CHECKING:  # the serving engine (DuckDB, Arrow) and the settings are loaded when a command runs
    from pipelines.settings import Settings
    from serving.market.pricing import Billing, InMemoryBilling


def _settings(ctx: typer.Context) -> Settings:
    from pipelines.cli.main import settings_from

    return settings_from(ctx)


def offline_billing(path: Path) -> InMemoryBilling:
    """Billing from a JSON file ``{"prices": {...}, "fee_bps": n, "balances": {account: cents}}``.

    For trying the service without a chain; receipts are then settled in memory only.
    """
    from serving.market.pricing import InMemoryBilling

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        billing = InMemoryBilling({k: int(v) for k, v in doc["prices"].items()}, int(doc.get("fee_bps", 0)))
    except (OSError, ValueError, KeyError) as exc:
        raise PccConfigError(f"offline prices file {path}: {exc}") from None
    for account, cents in doc.get("balances", {}).items():
        billing.fund(account, int(cents))
    return billing


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
    offline_prices: Annotated[
        Path | None, typer.Option(help="Bill from this JSON file instead of the chain (local trial).")
    ] = None,
    ingest: Annotated[
        bool,
        typer.Option(
            "--ingest",
            help="Also accept producers' events under /v1/events (the HTTP ingest bridge; needs the "
            "ledger deployment and Kafka).",
        ),
    ] = False,
    alerts: Annotated[
        bool,
        typer.Option(
            "--alerts",
            help="Also run the alert service: subscriptions under /v1/subscriptions, webhooks delivered "
            "from the alerts topic (needs Kafka).",
        ),
    ] = False,
) -> None:
    """Serve paid SQL over the merged views (OpenAPI at /docs)."""
    import uvicorn

    from pipelines.access import AccessService, open_grant_store
    from pipelines.vault import IdentityVault
    from serving.api import create_app
    from serving.auth import service_domain
    from serving.config import ServingConfig
    from serving.ingest.sources import ChainSources
    from serving.market.chain import chain_billing
    from serving.passport import InMemoryRoots, LeafFilePaths, mount_passport

    settings = _settings(ctx)
    config = ServingConfig.from_settings(settings)
    # the bound address is also the host signed requests name, unless serving.public_host is set
    config = config.model_copy(update={"host": host or config.host, "port": port or config.port})
    billing: Billing = offline_billing(offline_prices) if offline_prices else chain_billing(settings)
    logs = settings.data_dir / "producers"
    paths = LeafFilePaths({d.name: d for d in logs.iterdir() if d.is_dir()}) if logs.is_dir() else None
    access = AccessService(
        IdentityVault(settings), open_grant_store(settings), key_cache_s=settings.access.cache_s
    )
    # the key service for producers of other organisations needs the ledger's sources (chain billing)
    ledger = getattr(billing, "client", None)
    producers = ChainSources(ledger) if ledger is not None else None
    app = create_app(config, billing, audit_paths=paths, access=access, producers=producers)
    client = getattr(billing, "client", None)  # ChainBilling: its ledger client reads anchored roots
    mount_passport(
        app,
        roots=client.anchors if client is not None else InMemoryRoots(),
        paths=paths,
        current_owner=access.vault.current_owner,  # a sale ends the seller's share links
    )
    service = None
    if alerts:
        from serving.alerts.mount import alerts_beside, billing_of, with_alerts

        service = alerts_beside(settings, service_domain(config, billing), billing_of(app))
        app = with_alerts(app, service.app)
        service.start()
    try:
        if not ingest:
            uvicorn.run(app, host=config.host, port=config.port, log_level="info")
            return
        from serving.ingest.mount import serve_with_ingest

        serve_with_ingest(settings, app, service_domain(config, billing), host=config.host, port=config.port)
    finally:
        if service is not None:
            service.stop()


def query(
    ctx: typer.Context,
    sql: Annotated[str, typer.Argument(help="One SELECT over the serving views.")],
    key_file: Annotated[Path, typer.Option(help="File holding the consumer's hex private key.")],
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or arrow.")] = "table",
    quote: Annotated[bool, typer.Option("--quote", help="Only show the price (dry run).")] = False,
    url: Annotated[str | None, typer.Option(help="Service URL (default from settings).")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", help="Write csv/json/arrow output to this file.")
    ] = None,
    grant_key: Annotated[
        Path | None,
        typer.Option(
            "--grant-key",
            help="Your X25519 consumer key file (pcc grant keygen): open the protected fields your "
            "grants cover, here, on your side.",
        ),
    ] = None,
    chain_id: Annotated[
        int | None,
        typer.Option(
            "--chain-id",
            help="Sign only for a service on this chain (its EIP-712 domain, GET /v1/domain, is "
            "checked before anything is signed).",
        ),
    ] = None,
) -> None:
    """Run a paid query (or price it with --quote) against ``pcc serve``."""
    from rich.console import Console
    from rich.table import Table

    from serving.client import PccClient

    if fmt not in ("table", "csv", "json", "arrow"):
        raise PccConfigError(f"--format must be table, csv, json or arrow, not {fmt!r}")
    settings = _settings(ctx)
    base = url or f"http://{settings.serving.host}:{settings.serving.port}"
    try:
        key = key_file.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise PccConfigError(f"--key-file {key_file}: {exc.strerror}") from None
    console = Console()
    keys = None
    if grant_key is not None:
        from pipelines.access import ConsumerKeyPair

        keys = ConsumerKeyPair.load(grant_key)
    with PccClient(base, key, grant_keys=keys, chain_id=chain_id) as client:
        if quote:
            q = client.quote(sql)
            console.print_json(json.dumps(q))
            return
        if keys is not None and fmt in ("table", "json"):
            result = client.query(sql, "arrow")
            opened = result.opened
            if fmt == "json":
                text = json.dumps(opened, default=str, indent=2)
                if output:
                    output.write_text(text + "\n", encoding="utf-8")
                else:
                    typer.echo(text)
            else:
                table = Table(*result.table.column_names)
                for row in opened:
                    table.add_row(*("" if v is None else _cell(v) for v in row.values()))
                console.print(table)
            typer.echo(
                f"{len(opened)} rows - receipt {result.receipt['receipt_no']}: {result.price_cents} cents",
                err=True,
            )
            return
        if fmt in ("csv", "json", "arrow"):
            response = client.query_raw(sql, fmt)
            if output:
                output.write_bytes(response.content)
            elif fmt == "arrow":
                sys.stdout.buffer.write(response.content)
            else:
                sys.stdout.write(response.text)
            typer.echo(
                f"receipt {response.headers.get('X-PCC-Receipt')}: {response.headers.get('X-PCC-Price-Cents')} cents",
                err=True,
            )
            return
        result = client.query(sql, "arrow")
        table = Table(*result.table.column_names)
        for row in result.table.to_pylist():
            table.add_row(*("" if v is None else str(v) for v in row.values()))
        console.print(table)
        console.print(
            f"{result.table.num_rows} rows - receipt {result.receipt['receipt_no']}: {result.price_cents} cents"
        )


def _cell(value: object) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else str(value)


def verify(
    ctx: typer.Context,
    event_id: Annotated[str, typer.Argument(help="The event whose proof to check.")],
    url: Annotated[str | None, typer.Option(help="Service URL (default from settings).")] = None,
) -> None:
    """Fetch an event's proof from ``pcc serve`` and check it against the chain itself."""
    import httpx

    from ledger.client import LedgerClient
    from serving.client import raise_for
    from serving.proof import check_proof, require_valid

    settings = _settings(ctx)
    base = url or f"http://{settings.serving.host}:{settings.serving.port}"
    try:
        response = httpx.get(f"{base}/v1/proof/{event_id}", timeout=30)
    except httpx.HTTPError as exc:
        raise PccTransientError(f"cannot reach the serving API at {base}: {exc}") from None
    raise_for(response)
    check = check_proof(response.json(), LedgerClient.from_settings(settings).anchors)
    typer.echo(json.dumps(check.as_dict(), indent=2))
    require_valid(check)
