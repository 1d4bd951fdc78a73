"""``pcc vault``: pseudonyms and GDPR erasure in the identity vault."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.cli.main import settings_from
from pipelines.errors import PccValueError

app = typer.Typer(help="Identity vault: VIN pseudonyms and erasure.", no_args_is_help=True)


@app.command("pseudonym")
def pseudonym(
    ctx: typer.Context,
    vin: Annotated[str, typer.Option("--vin", help="The vehicle's VIN.")],
) -> None:
    """Print the vehicle pseudonym of a VIN (created on first use)."""
    from pipelines.vault import IdentityVault

    with IdentityVault(settings_from(ctx)) as vault:
        typer.echo(vault.pseudonymize_vehicle(vin))


@app.command("erase")
def erase(
    ctx: typer.Context,
    vin: Annotated[str | None, typer.Option("--vin", help="The vehicle's VIN.")] = None,
    vehicle: Annotated[str | None, typer.Option("--vehicle", help="Or its pseudonym v-...")] = None,
) -> None:
    """Erase a vehicle: its VIN, salt, data keys and sole owners' identities (GDPR art. 17)."""
    if (vin is None) == (vehicle is None):
        raise PccValueError("pcc vault erase: give exactly one of --vin or --vehicle")
    target = vin if vin is not None else vehicle
    assert target is not None
    from pipelines.vault import IdentityVault

    with IdentityVault(settings_from(ctx)) as vault:
        erased = vault.erase(target, actor="cli")
    typer.echo(f"erased vehicle {erased}: its pseudonym can no longer be linked to a VIN or an owner")
