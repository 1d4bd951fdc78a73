"""Billing on the chain: prices and fee from the Parameters contract, funds and
settlement through the Marketplace, all through ``ledger.client``'s public API."""

from __future__ import annotations

from pipelines.errors import PccStateError
from pipelines.settings import Settings
from serving.pricing import Billing


def chain_billing(settings: Settings) -> Billing:
    """The Billing backed by the deployed contracts (requires the ledger client)."""
    try:
        from ledger import client as ledger_client
    except ImportError as exc:
        raise PccStateError(
            f"on-chain billing needs ledger.client ({exc}); use --offline-prices FILE to try the service locally"
        ) from None
    raise PccStateError(
        f"ledger.client {getattr(ledger_client, '__name__', '')} does not yet offer marketplace settlement; "
        "use --offline-prices FILE"
    )
