"""Settings of the ingest bridge, derived once from the platform's :class:`Settings`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.settings import Settings


@dataclass(frozen=True)
class IngestConfig:
    """Everything the bridge needs; built by :meth:`from_settings`, passed in."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8610
    public_host: str | None = None
    max_body_bytes: int = 1024 * 1024
    max_lines: int = 1000
    max_queued: int = 4
    publish_timeout_s: float = 30.0
    retry_after_s: int = 5
    max_request_age_s: int = 300
    max_line_bytes: int = 16 * 1024
    local_chain_id: int = 31337

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
        s = settings.ingest
        return cls(
            data_dir=settings.data_dir.resolve(),
            host=s.host,
            port=s.port,
            public_host=s.public_host,
            max_body_bytes=s.max_body_bytes,
            max_lines=s.max_lines,
            max_queued=s.max_queued,
            publish_timeout_s=s.publish_timeout_s,
            retry_after_s=s.retry_after_s,
            max_request_age_s=settings.serving.max_request_age_s,
            max_line_bytes=settings.producer.max_payload_bytes,
            local_chain_id=settings.serving.local_chain_id,
        )
