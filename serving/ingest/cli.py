"""``pcc ingest serve``: the HTTP ingest bridge on its own (a few lines over the library)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="The HTTP ingest bridge: producers without Kafka send signed JSON Lines.", no_args_is_help=True
)


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (default ingest.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default ingest.port, 8610).")] = None,
) -> None:
    """Accept producers' events over HTTP (POST /v1/events/SOURCE_ID; OpenAPI at /docs)."""
    import uvicorn

    from ledger.client import LedgerClient
    from pipelines.cli.main import settings_from
    from serving.ingest.app import create_ingest_app, request_authenticator
    from serving.ingest.config import IngestConfig
    from serving.ingest.wiring import bridge_from_settings, ledger_domain

    settings = settings_from(ctx)
    config = IngestConfig.from_settings(settings)
    config = replace(config, host=host or config.host, port=port or config.port)
    client = LedgerClient.from_settings(settings)
    bridge = bridge_from_settings(settings, config, client)
    auth = request_authenticator(config, ledger_domain(client, config.request_host))
    uvicorn.run(create_ingest_app(config, bridge, auth), host=config.host, port=config.port, log_level="info")


@app.command("sign")
def sign(
    path: Annotated[str, typer.Argument(help="The request target, e.g. /v1/events/garage-net-03.")],
    body: Annotated[Path, typer.Argument(help="The exact file you will send (JSON Lines).")],
    key_file: Annotated[Path, typer.Option(help="File holding the source's hex private key.")],
    url: Annotated[str, typer.Option(help="The bridge's URL (its GET /v1/domain is signed for).")] = (
        "http://127.0.0.1:8610"
    ),
    method: Annotated[str, typer.Option(help="HTTP method.")] = "POST",
    ttl: Annotated[int, typer.Option(help="Seconds the signature stays valid (at most 300).")] = 60,
) -> None:
    """Print the signing headers of one request, one per line, for ``curl -H @FILE``."""
    import httpx

    from pipelines.errors import PccConfigError
    from serving.auth import RequestDomain, sign_request

    try:
        key = key_file.read_text(encoding="ascii").strip()
        data = body.read_bytes()
    except OSError as exc:
        raise PccConfigError(f"{exc.filename}: {exc.strerror}") from None
    try:
        document = httpx.get(url.rstrip("/") + "/v1/domain", timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise PccConfigError(f"cannot read the signing domain at {url}/v1/domain: {exc}") from None
    domain = RequestDomain.from_document(document)
    for name, value in sign_request(key, method, path, data, ttl_s=ttl, domain=domain).items():
        typer.echo(f"{name}: {value}")
