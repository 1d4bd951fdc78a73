"""The HTTP ingest bridge: producers without Kafka send signed JSON Lines (see :mod:`serving.ingest.app`)."""

from serving.ingest.app import EVENTS_PREFIX, create_ingest_app, request_authenticator, with_ingest
from serving.ingest.bridge import BatchAnswer, IngestBridge, as_lines, derived_event_id
from serving.ingest.config import IngestConfig
from serving.ingest.sources import ChainSources, MemorySources, RegisteredSource, SourceDirectory
from serving.ingest.store import AcceptedEvents

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
