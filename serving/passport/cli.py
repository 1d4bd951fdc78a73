"""``pcc passport``: an owner's share links (share, links, revoke) and buying a report (buy).

Share links are made for a car's current owner by the operator who
authenticated them, as grants are (``pcc grant create``); the link is printed
on stdout, its id and expiry on stderr.  See docs/passport.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.errors import PccConfigError, PccNotFoundError, PccValueError

if TYPE_CHECKING:
    from pipelines.settings import Settings
    from pipelines.vault import IdentityVault
    from serving.passport.share import ShareLinks

app = typer.Typer(help="Car passports: owners' share links, paid reports.", no_args_is_help=True)

VinOpt = Annotated[str | None, typer.Option("--vin", help="The vehicle's VIN.")]
VehicleOpt = Annotated[str | None, typer.Option("--vehicle", help="Or its pseudonym v-...")]
UrlOpt = Annotated[str | None, typer.Option("--url", help="Service URL (default from settings).")]


def _settings(ctx: typer.Context) -> Settings:
    from pipelines.cli.main import settings_from

    return settings_from(ctx)


def _base(settings: Settings, url: str | None) -> str:
    return url or f"http://{settings.serving.host}:{settings.serving.port}"


def _links(settings: Settings, vault: IdentityVault) -> ShareLinks:
    from serving.config import ServingConfig
    from serving.passport.share import ShareLinks

    return ShareLinks.open(ServingConfig.from_settings(settings).state_dir, vault.current_owner)


def _vehicle(vault: IdentityVault, vin: str | None, vehicle: str | None, command: str) -> str:
    if (vin is None) == (vehicle is None):
        raise PccValueError(f"pcc passport {command}: give exactly one of --vin or --vehicle")
    if vehicle is not None:
        return vehicle
    assert vin is not None
    found = vault.find_vehicle(vin)
    if found is None:
        raise PccNotFoundError("no such vehicle in the identity vault (erased or never seen)")
    return found


@app.command("share")
def share(
    ctx: typer.Context,
    vin: VinOpt = None,
    vehicle: VehicleOpt = None,
    ttl: Annotated[
        str, typer.Option("--ttl", help="How long the link opens the passport: 30m, 12h, 7d, 2w.")
    ] = "7d",
    url: UrlOpt = None,
) -> None:
    """Make a share link to a car's passport for its owner: whoever holds it opens it, free, until it expires."""
    from pipelines.vault import IdentityVault
    from serving.passport.share import parse_ttl, share_passport

    settings = _settings(ctx)
    seconds = parse_ttl(ttl)
    with IdentityVault(settings) as vault:
        link = share_passport(_links(settings, vault), vault, _vehicle(vault, vin, vehicle, "share"), seconds)
    typer.echo(link.url(_base(settings, url)))
    typer.echo(
        f"link {link.link_id}, valid until {link.expires_text}; revoke it: pcc passport revoke "
        f"--vehicle {link.vehicle} --link {link.link_id}",
        err=True,
    )


@app.command("links")
def links(ctx: typer.Context, vin: VinOpt = None, vehicle: VehicleOpt = None) -> None:
    """The share links of a car, newest first (ids, expiry, revoked or not; never the tokens)."""
    from pipelines.vault import IdentityVault

    settings = _settings(ctx)
    with IdentityVault(settings) as vault:
        found = _links(settings, vault).store.links(_vehicle(vault, vin, vehicle, "links"))
    typer.echo(json.dumps([link.as_dict() for link in found], indent=2))


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    vin: VinOpt = None,
    vehicle: VehicleOpt = None,
    link: Annotated[
        str | None, typer.Option("--link", help="The link id (default: every link of the car).")
    ] = None,
) -> None:
    """Revoke a share link of a car (or all of them): it opens nothing from now on."""
    from pipelines.vault import IdentityVault
    from serving.passport.share import unshare_passport

    settings = _settings(ctx)
    with IdentityVault(settings) as vault:
        target = _vehicle(vault, vin, vehicle, "revoke")
        revoked = unshare_passport(_links(settings, vault), vault, target, link)
    if link is not None and not revoked:
        raise PccNotFoundError(f"no live share link {link} of vehicle {target}")
    typer.echo(f"revoked {revoked} share link(s) of {target}")


@app.command("buy")
def buy(
    ctx: typer.Context,
    vehicle: Annotated[str, typer.Argument(help="The vehicle pseudonym v-...")],
    key_file: Annotated[Path, typer.Option(help="File holding the consumer's hex private key.")],
    html: Annotated[bool, typer.Option("--html", help="The page instead of its data (JSON).")] = False,
    output: Annotated[Path | None, typer.Option("-o", help="Write the report to this file.")] = None,
    url: UrlOpt = None,
) -> None:
    """Buy one passport report (governance's price per report), signed with the consumer's key."""
    from serving.client import PccClient

    settings = _settings(ctx)
    try:
        key = key_file.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise PccConfigError(f"--key-file {key_file}: {exc.strerror}") from None
    with PccClient(_base(settings, url), key) as client:
        report = client.passport(vehicle, "html" if html else "json")
    if output is not None:
        output.write_bytes(report.content)
    else:
        sys.stdout.buffer.write(report.content)
        sys.stdout.flush()
    typer.echo(f"receipt {report.receipt_no}: {report.price_cents} cents", err=True)
