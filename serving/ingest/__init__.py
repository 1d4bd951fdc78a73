"""The HTTP ingest bridge: producers without Kafka send signed JSON Lines (see :mod:`serving.ingest.app`).

Names are loaded on first use, so ``pcc ingest --help`` imports neither the
web framework nor the producer SDK.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.ingest.app import EVENTS_PREFIX, create_ingest_app, request_authenticator, with_ingest
    from serving.ingest.bridge import BatchAnswer, IngestBridge, as_lines, derived_event_id
    from serving.ingest.config import IngestConfig
    from serving.ingest.sources import ChainSources, MemorySources, RegisteredSource, SourceDirectory
    from serving.ingest.store import AcceptedEvents

_EXPORTS = {
    "EVENTS_PREFIX": "serving.ingest.app",
    "create_ingest_app": "serving.ingest.app",
    "request_authenticator": "serving.ingest.app",
    "with_ingest": "serving.ingest.app",
    "BatchAnswer": "serving.ingest.bridge",
    "IngestBridge": "serving.ingest.bridge",
    "as_lines": "serving.ingest.bridge",
    "derived_event_id": "serving.ingest.bridge",
    "IngestConfig": "serving.ingest.config",
    "ChainSources": "serving.ingest.sources",
    "MemorySources": "serving.ingest.sources",
    "RegisteredSource": "serving.ingest.sources",
    "SourceDirectory": "serving.ingest.sources",
    "AcceptedEvents": "serving.ingest.store",
}

__all__ = [
    "EVENTS_PREFIX",
    "AcceptedEvents",
    "BatchAnswer",
    "ChainSources",
    "IngestBridge",
    "IngestConfig",
    "MemorySources",
    "RegisteredSource",
    "SourceDirectory",
    "as_lines",
    "create_ingest_app",
    "derived_event_id",
    "request_authenticator",
    "with_ingest",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'serving.ingest' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
