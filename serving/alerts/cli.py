"""``pcc alerts``: run the alert service, and a subscriber's commands (a few lines over the library)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from serving.alerts.client import AlertsClient

app = typer.Typer(
    help="Alert webhooks: fraud flags, wrecks and sales pushed to subscribers.", no_args_is_help=True
)

_URL = typer.Option("--url", help="The alert service's URL.")
_KEY = typer.Option("--key-file", help="File holding your account's hex private key (signs requests).")


def _client(url: str, key_file: Path) -> AlertsClient:
    from pipelines.errors import PccConfigError
    from serving.alerts.client import AlertsClient

    try:
        key = key_file.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise PccConfigError(f"{exc.filename}: {exc.strerror}") from None
    return AlertsClient(url, key)


def _print(doc: object) -> None:
    typer.echo(json.dumps(doc, indent=2))


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (default alerts.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default alerts.port, 8620).")] = None,
) -> None:
    """Deliver alerts to subscribers' webhooks, unbilled (development); the subscriptions API on
    HOST:PORT (OpenAPI at /docs).  Billed deliveries: pcc serve --alerts."""
    import uvicorn

    from pipelines.cli.main import settings_from
    from pipelines.errors import PccConfigError
    from serving.alerts.config import AlertsConfig
    from serving.alerts.service import service_from_settings

    settings = settings_from(ctx)
    config = AlertsConfig.from_settings(settings)
    if not config.development:
        raise PccConfigError(
            "pcc alerts serve delivers alerts without billing them, so it runs in "
            "alerts.mode=development only; in production run pcc serve --alerts (deliveries held "
            "and charged with the queries' receipts)"
        )
    config = replace(config, host=host or config.host, port=port or config.port)
    service = service_from_settings(settings, config)
    uvicorn.run(service.app, host=config.host, port=config.port, log_level="info")


@app.command("subscribe")
def subscribe(
    destination: Annotated[str, typer.Argument(help="Your HTTPS endpoint alerts are POSTed to.")],
    kinds: Annotated[list[str], typer.Option("--kind", help="An alert kind or family (fraud.*); repeat.")],
    key_file: Annotated[Path, _KEY],
    vehicles_file: Annotated[
        Path | None,
        typer.Option(
            "--vehicles", help="File of vehicle pseudonyms, one a line; omitted: fleet-wide (public kinds)."
        ),
    ] = None,
    grant_key: Annotated[
        Path | None, typer.Option(help="Your consumer key file (pcc grant keygen): grants name it.")
    ] = None,
    url: Annotated[str, _URL] = "http://127.0.0.1:8620",
) -> None:
    """Subscribe DESTINATION; prints the subscription and its secret (shown once: keep it)."""
    from pipelines.access.wrap import ConsumerKeyPair
    from pipelines.errors import PccConfigError

    vehicles: list[str] | None = None
    keys: ConsumerKeyPair | None = None
    if vehicles_file is not None:
        if grant_key is None:
            raise PccConfigError("--vehicles needs --grant-key (the consumer key your grants name)")
        try:
            vehicles = [v.strip() for v in vehicles_file.read_text().splitlines() if v.strip()]
        except OSError as exc:
            raise PccConfigError(f"{exc.filename}: {exc.strerror}") from None
        keys = ConsumerKeyPair.load(grant_key)
    with _client(url, key_file) as client:
        _print(client.subscribe(destination, kinds, vehicles, keys))


@app.command("list")
def list_(key_file: Annotated[Path, _KEY], url: Annotated[str, _URL] = "http://127.0.0.1:8620") -> None:
    """Your subscriptions."""
    with _client(url, key_file) as client:
        _print(client.subscriptions())


@app.command("deliveries")
def deliveries(
    subscription: Annotated[str, typer.Argument(help="The subscription id (sub_…).")],
    key_file: Annotated[Path, _KEY],
    url: Annotated[str, _URL] = "http://127.0.0.1:8620",
    status: Annotated[str | None, typer.Option(help="pending, delivered, failed or gone.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
) -> None:
    """The delivery log of a subscription: each alert's status, attempts, last answer."""
    with _client(url, key_file) as client:
        _print(client.deliveries(subscription, status, limit))


@app.command("redeliver")
def redeliver(
    subscription: Annotated[str, typer.Argument(help="The subscription id (sub_…).")],
    key_file: Annotated[Path, _KEY],
    alert: Annotated[
        list[str] | None, typer.Option("--alert", help="An alert id; repeat. Default: every failed one.")
    ] = None,
    url: Annotated[str, _URL] = "http://127.0.0.1:8620",
) -> None:
    """Deliver parked (failed) alerts again, or the ones named."""
    with _client(url, key_file) as client:
        _print({"requeued": client.redeliver(subscription, alert)})


@app.command("unsubscribe")
def unsubscribe(
    subscription: Annotated[str, typer.Argument(help="The subscription id (sub_…).")],
    key_file: Annotated[Path, _KEY],
    url: Annotated[str, _URL] = "http://127.0.0.1:8620",
) -> None:
    """End a subscription: nothing more is delivered to it."""
    with _client(url, key_file) as client:
        client.unsubscribe(subscription)
    typer.echo(f"{subscription} ended")
