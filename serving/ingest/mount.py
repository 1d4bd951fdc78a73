"""``pcc serve --ingest``: the bridge under ``/v1/events`` of the serving API, signed for its domain."""

from __future__ import annotations

from typing import Any

import uvicorn

from pipelines.settings import Settings
from serving.auth import RequestDomain
from serving.ingest.app import create_ingest_app, request_authenticator, with_ingest
from serving.ingest.config import IngestConfig
from serving.ingest.wiring import bridge_from_settings


def serve_with_ingest(settings: Settings, app: Any, domain: RequestDomain, *, host: str, port: int) -> None:
    """Run the serving ``app`` with the bridge beside it: one port, one EIP-712 domain (the queries')."""
    config = IngestConfig.from_settings(settings)
    bridge = bridge_from_settings(settings, config)
    auth = request_authenticator(config, domain)
    ingest = create_ingest_app(config, bridge, auth, background=False)
    bridge.start()
    try:
        uvicorn.run(with_ingest(app, ingest), host=host, port=port, log_level="info")
    finally:
        bridge.close()
        auth.store.close()
