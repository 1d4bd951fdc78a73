"""Errors of the alert service; their HTTP status is declared here and mapped by :mod:`serving.errors`."""

from __future__ import annotations

from typing import Any

from pipelines.errors import PccNotFoundError, PccPermissionError, PccValueError
from serving.errors import ServingError


class DestinationRefused(ServingError, PccValueError):
    """A destination URL a subscription may not name (scheme, host, or an address inside a network)."""

    status = 400


class NotGranted(ServingError, PccPermissionError):
    """A vehicle of the subscription the subscriber holds no grant on; ``position`` is its 1-based place."""

    status = 403

    def __init__(self, position: int, message: str) -> None:
        super().__init__(message)
        self.position = position

    def detail(self) -> dict[str, Any]:
        return {**super().detail(), "position": self.position}


class GrantKeyRefused(ServingError, PccPermissionError):
    """The subscriber did not prove it holds the consumer key its grants name."""

    status = 403


class SubscriptionNotFound(ServingError, PccNotFoundError):
    """No subscription of that id belongs to the signer."""

    status = 404


class KindNotForSale(ServingError, PccValueError):
    """An alert kind governance has set no price for: it cannot be subscribed to yet."""

    status = 400


class FleetWideRefused(ServingError, PccPermissionError):
    """A subscription without a vehicle list to a kind that reveals protected information."""

    status = 403
