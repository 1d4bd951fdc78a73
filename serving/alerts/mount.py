"""``pcc serve --alerts``: the alert service on the query API's port, signed for its domain.

One process for the operator: the subscriptions API answers under
``/v1/subscriptions`` and ``/v1/alerts`` beside the queries (same EIP-712
domain and host, so a consumer signs both alike), and the dispatcher with its
feed from the alerts topic runs for as long as the server does.  Deliveries are
billed on the query API's receipts, holds and settlement loop (:func:`billing_of`).
"""

from __future__ import annotations

from typing import Any

from pipelines.access import open_grant_store
from pipelines.settings import Settings
from serving.alerts.billing import AlertBilling
from serving.alerts.config import AlertsConfig
from serving.alerts.service import AlertService, build_service
from serving.auth import RequestDomain

#: the paths the alert service answers when it shares the query API's port
ALERT_PREFIXES = ("/v1/subscriptions", "/v1/alerts")


def billing_of(app: Any) -> AlertBilling:
    """Alert billing on a query API's own billing, receipts, holds and producer checks
    (``app.state.paid``): its settlement loop settles the deliveries' receipts with the queries'."""
    paid = app.state.paid
    return AlertBilling(paid.billing, paid.receipts, paid.reservations, paid.producer_problems)


def alerts_beside(
    settings: Settings, domain: RequestDomain, billing: AlertBilling | None = None
) -> AlertService:
    """The alert service for the query API's ``domain`` (not started: :func:`with_alerts` and ``start``)."""
    return build_service(
        AlertsConfig.from_settings(settings), domain, open_grant_store(settings), billing=billing
    )


def with_alerts(main: Any, alerts: Any) -> Any:
    """One ASGI app: the alert service's paths to ``alerts``, everything else (and lifespan) to ``main``."""

    async def dispatch(scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and any(path == p or path.startswith(p + "/") for p in ALERT_PREFIXES):
            await alerts(scope, receive, send)
        else:
            await main(scope, receive, send)

    return dispatch
