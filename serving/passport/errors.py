"""Errors of the car passport pages and their HTTP status, mapped in one place."""

from __future__ import annotations

from pipelines.errors import PccNotFoundError, PccPermissionError, PccTransientError, PccValueError
from serving.errors import ServingError


class PassportError(ServingError):
    """Root of the passport's errors (a serving error: its status is in serving.errors.HTTP_STATUS)."""


class BadVehicleError(PassportError, PccValueError):
    """The path names neither a vehicle pseudonym nor a well-formed VIN."""

    status = 400


class VehicleNotFoundError(PassportError, PccNotFoundError):
    """No event of this vehicle (or no such event id) is in the serving views."""

    status = 404


class OwnerOnlyError(PassportError, PccPermissionError):
    """A VIN was asked for by someone who is not its authorised owner."""

    status = 403


class ShareLinkError(PassportError, PccPermissionError):
    """A share link that does not open this passport now: malformed, altered, made for another
    vehicle, expired, unknown, revoked, or ended by the car's sale."""

    status = 403


class PassportClosedError(PassportError, PccPermissionError):
    """Neither a share link nor a signed, paid request, on a service that sells no reports."""

    status = 401


class ServingViewMissingError(PassportError, PccTransientError):
    """The serving database has no ``vehicle_history`` view (nothing published or loaded yet)."""

    status = 503


class ChainUnavailableError(PassportError, PccTransientError):
    """The checkpoint roots could not be read from the ledger right now."""

    status = 503
