"""Settings of the serving layer, derived once from the platform's :class:`Settings`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.settings import Settings


@dataclass(frozen=True)
class ServingConfig:
    """Everything the serving layer needs; built by :meth:`from_settings`, passed in."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8600
    query_timeout_s: float = 10.0
    max_rows: int = 100_000
    memory_limit: str = "2GB"
    threads: int = 2
    max_request_age_s: int = 300
    refresh_s: float = 0.25
    #: the event loop answers an idle service's fast query shapes itself, stopping them at this budget (0: never)
    inline_budget_ms: float = 20.0
    quality_weight_bps: int = 0
    settle_every_s: float = 30.0
    signing_key: str | None = None  # hex private key that signs receipts
    master_root: Path | None = None  # the master dataset (audit paths, GDPR); default data_dir/master
    #: accounts allowed to act for an owner they authenticated (grant, revoke, export, erase)
    gdpr_operators: tuple[str, ...] = ()
    #: request bodies larger than this are refused (413) before anything is parsed
    max_body_bytes: int = 64 * 1024
    #: cents held from a consumer's free funds before its query runs (serving.market.reservations)
    hold_cents: int = 1
    max_in_flight: int = 4
    rate_per_s: float = 50.0
    rate_burst: int = 100
    #: the host[:port] or URL consumers reach the service at, signed into requests; default host:port
    public_host: str | None = None
    #: the chain id of signed requests' EIP-712 domain without a ledger deployment (offline billing)
    local_chain_id: int = 31337

    @property
    def request_host(self) -> str:
        """The host every signed request names (``serving.auth.public_host`` normalises it)."""
        return self.public_host or f"{self.host}:{self.port}"

    @property
    def master_dir(self) -> Path:
        return self.master_root or self.data_dir / "master"

    @property
    def realtime_dir(self) -> Path:
        return self.data_dir / "realtime"

    @property
    def batch_dir(self) -> Path:
        return self.data_dir / "batch"

    @property
    def state_dir(self) -> Path:
        """Where the service keeps its own files (version stores, receipts, key)."""
        return self.data_dir / "serving"

    @classmethod
    def from_settings(cls, settings: Settings) -> ServingConfig:
        s = settings.serving
        return cls(
            data_dir=settings.data_dir.resolve(),
            host=s.host,
            port=s.port,
            query_timeout_s=s.query_timeout_s,
            max_rows=s.max_rows,
            memory_limit=s.memory_limit,
            threads=s.threads,
            max_request_age_s=s.max_request_age_s,
            refresh_s=s.refresh_s,
            inline_budget_ms=s.inline_budget_ms,
            quality_weight_bps=s.quality_weight_bps,
            settle_every_s=s.settle_every_s,
            signing_key=s.signing_key.get_secret_value() if s.signing_key else None,
            master_root=settings.batch.master_dataset,
            gdpr_operators=tuple(a.lower() for a in s.gdpr_operators),
            max_body_bytes=s.max_body_bytes,
            hold_cents=s.hold_cents,
            max_in_flight=s.max_in_flight,
            rate_per_s=s.rate_per_s,
            rate_burst=s.rate_burst,
            public_host=s.public_host,
            local_chain_id=s.local_chain_id,
        )
