"""The alert service on the platform's parts: the alerts topic, the grant store, the deployment's domain."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from pipelines.access import GrantStore, open_grant_store
from pipelines.settings import Settings
from serving.alerts.app import create_alerts_app
from serving.alerts.billing import AlertBilling
from serving.alerts.config import AlertsConfig
from serving.alerts.destinations import Resolver, system_resolver
from serving.alerts.dispatcher import Dispatcher
from serving.alerts.feed import AlertFeed
from serving.alerts.grants import ServiceKey
from serving.alerts.store import AlertStore
from serving.auth import Authenticator, RequestDomain
from serving.market.receipts import ReceiptStore


@dataclass
class AlertService:
    """The dispatcher, its feed from the topic and the subscriptions API, started and stopped together."""

    config: AlertsConfig
    store: AlertStore
    dispatcher: Dispatcher
    feed: AlertFeed
    auth: Authenticator
    app: Any

    def start(self) -> None:
        self.dispatcher.start()
        self.feed.start()

    def stop(self) -> None:
        self.feed.stop()
        self.dispatcher.stop()
        self.store.close()
        self.auth.store.close()


def build_service(
    config: AlertsConfig,
    domain: RequestDomain,
    grants: GrantStore,
    *,
    resolve: Resolver = system_resolver,
    billing: AlertBilling | None = None,
) -> AlertService:
    """``billing``: deliveries held and charged on the paid queries' receipts (``pcc serve --alerts``)."""
    store = AlertStore(config.state_dir / "alerts.sqlite")
    dispatcher = Dispatcher(config, store, resolve=resolve, grants=grants, billing=billing)
    feed = AlertFeed(config, dispatcher)
    nonces = ReceiptStore(config.state_dir / "requests.sqlite", "0x" + secrets.token_hex(32))
    auth = Authenticator(nonces, config.max_request_age_s, domain)
    key = ServiceKey(config.state_dir / "service.key")
    service = AlertService(config, store, dispatcher, feed, auth, None)
    service.app = create_alerts_app(
        config,
        store,
        dispatcher,
        auth,
        key,
        grants,
        resolve=resolve,
        on_start=service.start,
        on_stop=service.stop,
        billing=billing,
    )
    return service


def service_from_settings(settings: Settings, config: AlertsConfig) -> AlertService:
    """With a ledger deployment its EIP-712 domain (the queries'), else the local one."""
    from pipelines.access.store import grant_store_kind

    if grant_store_kind(settings) == "chain":
        from ledger.client import LedgerClient
        from serving.ingest.wiring import ledger_domain

        domain = ledger_domain(LedgerClient.from_settings(settings), config.request_host)
    else:
        domain = RequestDomain.local(settings.serving.local_chain_id, config.request_host)
    return build_service(config, domain, open_grant_store(settings))
