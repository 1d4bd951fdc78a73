"""Settings of the ingest bridge, derived once from the platform's :class:`Settings`."""

from __future__ import annotations

from pathlib import Path

from pipelines.settings import IngestSettings, Settings


class IngestConfig(IngestSettings):
    """Everything the bridge needs: the ``ingest`` settings and the few it shares with other layers.

    Built by :meth:`from_settings` and passed in; frozen like the settings.
    """

    data_dir: Path
    max_request_age_s: int = 300  # serving.max_request_age_s: signed requests share one limit
    max_line_bytes: int = 16 * 1024  # producer.max_payload_bytes: one event line, at most
    local_chain_id: int = 31337  # serving.local_chain_id: the EIP-712 chain id without a deployment

    @property
    def request_host(self) -> str:
        """The host every signed request names when the bridge runs on its own."""
        return self.public_host or f"{self.host}:{self.port}"

    @property
    def state_dir(self) -> Path:
        """The bridge's own files: accepted event ids, spent nonces."""
        return self.data_dir / "ingest"

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestConfig:
        return cls(
            **settings.ingest.model_dump(),
            data_dir=settings.data_dir.resolve(),
            max_request_age_s=settings.serving.max_request_age_s,
            max_line_bytes=settings.producer.max_payload_bytes,
            local_chain_id=settings.serving.local_chain_id,
        )
