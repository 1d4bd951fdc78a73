"""``pcc gdpr`` (erasure, export, audit) and ``pcc grant`` (consumer keys, grants) over the vault.

Grants made here are the owner's, signed by the vault with the owner's
delegated key: the operator running the command acts for an owner it has
authenticated.  Grants live on the ledger's AccessRegistry when a ledger is
deployed, else in ``<data_dir>/vault/grants.sqlite`` (``access.grant_store``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from pipelines.cli.main import settings_from
from pipelines.errors import PccNotFoundError, PccValueError

if TYPE_CHECKING:  # the vault, the access service (Arrow) and the settings are loaded when a command runs
    from pipelines.access import ClosableGrantStore, ParquetRows
    from pipelines.settings import Settings
    from pipelines.vault import IdentityVault

gdpr_app = typer.Typer(
    help="GDPR: erase a vehicle everywhere, export what is held about it.", no_args_is_help=True
)
grant_app = typer.Typer(help="Access grants to protected data categories.", no_args_is_help=True)

VinOpt = Annotated[str | None, typer.Option("--vin", help="The vehicle's VIN.")]
VehicleOpt = Annotated[str | None, typer.Option("--vehicle", help="Or its pseudonym v-...")]


def _vault(settings: Settings) -> IdentityVault:
    from pipelines.vault import IdentityVault

    return IdentityVault(settings)


def _grants(settings: Settings) -> ClosableGrantStore:
    from pipelines.access import open_grant_store

    return open_grant_store(settings)


def _views(settings: Settings) -> list[ParquetRows]:
    from pipelines import layout
    from pipelines.access import ParquetRows

    master = layout.master_dir(settings.data_dir, settings.batch.master_dataset)
    return [
        ParquetRows(master, "master dataset"),
        ParquetRows(layout.realtime_dir(settings.data_dir), "real-time view"),
    ]


def _target(vin: str | None, vehicle: str | None, command: str) -> str:
    if (vin is None) == (vehicle is None):
        raise PccValueError(f"pcc {command}: give exactly one of --vin or --vehicle")
    return vin if vin is not None else vehicle  # type: ignore[return-value]


def _vehicle(vault: IdentityVault, vin: str | None, vehicle: str | None, command: str) -> str:
    target = _target(vin, vehicle, command)
    if vin is None:
        return target
    found = vault.find_vehicle(target)
    if found is None:
        raise PccNotFoundError("no such vehicle in the identity vault (erased or never seen)")
    return found


def _echo_json(value: Any) -> None:
    typer.echo(
        orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str).decode()
    )


@gdpr_app.command("erase")
def erase(ctx: typer.Context, vin: VinOpt = None, vehicle: VehicleOpt = None) -> None:
    """Erase a vehicle: grants, then the vault (VIN, owners, data keys): its sealed data becomes unreadable."""
    settings = settings_from(ctx)
    from pipelines.access import erase_vehicle

    target = _target(vin, vehicle, "gdpr erase")
    with _vault(settings) as vault, _grants(settings) as grants:
        report = erase_vehicle(target, vault, [grants, *_views(settings)], actor="cli")
    _echo_json(report.to_dict())


@gdpr_app.command("export")
def export(
    ctx: typer.Context,
    vin: VinOpt = None,
    vehicle: VehicleOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the JSON here instead of stdout.")] = None,
) -> None:
    """Everything held about a vehicle, protected fields opened (right of access)."""
    settings = settings_from(ctx)
    from pipelines.access import export_subject

    target = _target(vin, vehicle, "gdpr export")
    with _vault(settings) as vault:
        data = export_subject(target, vault, _views(settings), actor="cli")
    if out is None:
        _echo_json(data)
    else:
        out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str))
        typer.echo(f"wrote {len(data['events'])} events to {out}")


@gdpr_app.command("audit")
def audit(ctx: typer.Context, limit: Annotated[int, typer.Option("--limit", min=1)] = 50) -> None:
    """The latest audit entries (erasures, grants, key releases, refusals), newest first."""
    with _vault(settings_from(ctx)) as vault:
        _echo_json(vault.audit_entries(limit))


@grant_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Private key file to create (mode 0600).")],
) -> None:
    """Create a consumer X25519 key pair; prints the public key to register in grants."""
    from pipelines.access import ConsumerKeyPair

    keys = ConsumerKeyPair.generate()
    keys.save(out)
    typer.echo(keys.public_key.hex())


@grant_app.command("create")
def create(
    ctx: typer.Context,
    category: Annotated[
        str, typer.Option("--category", help="owner_identity, precise_location or commercial.")
    ],
    grantee: Annotated[str, typer.Option("--grantee", help="The consumer's public key (64 hex).")],
    vin: VinOpt = None,
    vehicle: VehicleOpt = None,
    days: Annotated[int, typer.Option("--days", min=1, help="Validity in days.")] = 365,
) -> None:
    """Grant a consumer a protected category of a vehicle, on behalf of its current owner."""
    from pipelines.access import AccessService

    settings = settings_from(ctx)
    with _vault(settings) as vault, _grants(settings) as grants:
        service = AccessService(vault, grants)
        v = _vehicle(vault, vin, vehicle, "grant create")
        grant = service.grant_as_owner(grantee, v, category, int(time.time()) + days * 86_400)
    _echo_json({k: v for k, v in grant.to_dict().items() if k not in ("signature", "grantor")})


@grant_app.command("revoke")
def revoke(
    ctx: typer.Context,
    category: Annotated[str, typer.Option("--category")],
    grantee: Annotated[str, typer.Option("--grantee", help="The consumer's public key (64 hex).")],
    vin: VinOpt = None,
    vehicle: VehicleOpt = None,
) -> None:
    """Revoke a grant on behalf of the current owner; new data gets a key the consumer never sees."""
    from pipelines.access import AccessService

    settings = settings_from(ctx)
    with _vault(settings) as vault, _grants(settings) as grants:
        service = AccessService(vault, grants)
        v = _vehicle(vault, vin, vehicle, "grant revoke")
        epoch = service.revoke_as_owner(grantee, v, category)
    typer.echo(f"revoked; {category} of {v} is now sealed under key epoch {epoch}")


@grant_app.command("list")
def list_grants(
    ctx: typer.Context,
    vin: VinOpt = None,
    vehicle: VehicleOpt = None,
    grantee: Annotated[str | None, typer.Option("--grantee")] = None,
) -> None:
    """Current grants (optionally of one vehicle or one consumer key)."""
    from pipelines.access import parse_public_key

    settings = settings_from(ctx)
    with _vault(settings) as vault, _grants(settings) as grants:
        v = None if vin is None and vehicle is None else _vehicle(vault, vin, vehicle, "grant list")
        rows = grants.grants(vehicle=v, grantee=None if grantee is None else parse_public_key(grantee))
    now = time.time()
    _echo_json(
        [
            {
                **{k: x for k, x in g.to_dict().items() if k not in ("signature", "grantor")},
                "grantor": g.grantor.split(":", 1)[0],
                "expired": g.expiry_s <= now,
            }
            for g in rows
        ]
    )
