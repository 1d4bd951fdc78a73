"""``pcc ingest serve``: the HTTP ingest bridge on its own (a few lines over the library)."""

from __future__ import annotations

from dataclasses import replace
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
