"""Errors of the car passport pages and their HTTP status, mapped in one place."""

from __future__ import annotations

from pipelines.errors import PccError, PccNotFoundError, PccPermissionError, PccTransientError, PccValueError


class PassportError(PccError):
    """Root of the passport's errors."""

    status: int = 500


class BadVehicleError(PassportError, PccValueError):
    """The path names neither a vehicle pseudonym nor a well-formed VIN."""

    status = 400


class VehicleNotFoundError(PassportError, PccNotFoundError):
    """No event of this vehicle (or no such event id) is in the serving views."""

    status = 404


class OwnerOnlyError(PassportError, PccPermissionError):
    """A VIN was asked for by someone who is not its authorised owner."""

    status = 403


class ServingViewMissingError(PassportError, PccTransientError):
    """The serving database has no ``vehicle_history`` view (nothing published or loaded yet)."""

    status = 503


class ChainUnavailableError(PassportError, PccTransientError):
    """The checkpoint roots could not be read from the ledger right now."""

    status = 503
