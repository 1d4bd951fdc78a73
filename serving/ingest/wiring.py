"""The bridge on the platform's real parts: the ledger's SourceRegistry and anchors, Kafka, the vault."""

from __future__ import annotations

from typing import Any

from pipelines.settings import Settings
from serving.auth import RequestDomain, public_host
from serving.ingest.bridge import IngestBridge
from serving.ingest.config import IngestConfig
from serving.ingest.sources import ChainSources


def ledger_domain(client: Any, host: str) -> RequestDomain:
    """The queries' EIP-712 domain of a deployment (chain id, Marketplace) for a service at ``host``."""
    deployment = client.deployment
    return RequestDomain(int(deployment.chain_id), str(deployment.address("Marketplace")), public_host(host))


def bridge_from_settings(settings: Settings, config: IngestConfig, client: Any = None) -> IngestBridge:
    """A bridge over the deployment of ``settings.ledger`` and the broker of ``settings.kafka``."""
    from ledger.client import LedgerClient
    from pipelines.producer import load_anchor
    from pipelines.producer.kafka import publisher_for
    from pipelines.vault import IdentityVault

    client = client or LedgerClient.from_settings(settings)
    publisher = publisher_for(settings, delivery_timeout_s=config.publish_timeout_s, client_id="pcc-ingest")
    return IngestBridge(
        settings,
        config,
        sources=ChainSources(client),
        anchor=load_anchor(settings),
        publisher=publisher,
        vault=IdentityVault(settings),
    )
