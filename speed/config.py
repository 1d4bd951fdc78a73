"""Configuration of the speed layer, derived once from the platform :class:`Settings`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipelines.settings import Settings
from pipelines.topics import deadletter_topic, event_topics
from speed.errors import SpeedError


@dataclass(frozen=True)
class SpeedConfig:
    bootstrap: str
    data_dir: Path
    topics: tuple[str, ...]
    deadletter_topic: str
    worker: str = "w0"
    runner: str = "FnApiRunner"
    until_idle_s: float | None = None
    max_events: int | None = None
    metrics_port: int | None = 9464
    proof_wait_s: float = 10.0
    flush_interval_ms: int = 250
    master_flush_rows: int = 100_000
    master_flush_interval_s: float = 60.0
    poll_max_records: int = 5000
    poll_timeout_ms: int = 2
    dedupe_window_s: int = 7 * 24 * 3600
    future_tolerance_s: float = 300.0
    max_event_bytes: int = 16 * 1024
    consumer_group: str = "pcc-speed"
    master_root: Path | None = None  # default data_dir/master (settings.batch.master_dataset)
    vault_path: Path | None = None  # identity vault (data keys); default data_dir/vault/identity.sqlite
    vault_key_file: Path | None = None  # default beside the vault file
    grants_path: Path | None = None  # grant store (key epochs); default data_dir/vault/grants.sqlite
    settings: Settings | None = None  # opens the grant store (the ledger's); None: SQLite at grants_path
    v1_cutover_ms: int | None = None  # version 1 events ingested from then on are refused (retired_version)
    pipeline_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not 0 < self.flush_interval_ms <= 500:
            raise SpeedError(f"speed.flush_interval_ms must be in (0, 500], got {self.flush_interval_ms}")
        if self.master_flush_rows <= 0 or self.master_flush_interval_s <= 0:
            raise SpeedError(
                "speed.master_flush_rows and speed.master_flush_interval_s must be positive, got "
                f"{self.master_flush_rows} and {self.master_flush_interval_s}"
            )
        if self.max_events is not None and self.max_events <= 0:
            raise SpeedError(f"--max-events must be positive, got {self.max_events}")

    @property
    def realtime_dir(self) -> Path:
        return self.data_dir / "realtime"

    @property
    def master_dir(self) -> Path:
        return self.master_root or self.data_dir / "master"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "speed"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> SpeedConfig:
        s = settings.speed
        prefix = settings.kafka.topic_prefix
        values: dict[str, object] = dict(
            bootstrap=settings.kafka.bootstrap,
            data_dir=settings.data_dir,
            topics=tuple(event_topics(prefix)),
            deadletter_topic=deadletter_topic(prefix),
            runner=s.runner,
            until_idle_s=s.until_idle_s,
            max_events=s.max_events,
            metrics_port=s.metrics_port,
            proof_wait_s=s.proof_wait_s,
            flush_interval_ms=s.flush_interval_ms,
            master_flush_rows=s.master_flush_rows,
            master_flush_interval_s=s.master_flush_interval_s,
            poll_max_records=s.poll_max_records,
            dedupe_window_s=s.dedupe_window_s,
            future_tolerance_s=float(settings.producer.future_tolerance_s),
            max_event_bytes=settings.producer.max_payload_bytes,
            consumer_group=s.consumer_group,
            master_root=settings.batch.master_dataset,
            vault_path=settings.vault.path or settings.path("vault", "identity.sqlite"),
            vault_key_file=settings.vault.key_file or settings.path("vault", "vault.key"),
            grants_path=settings.path("vault", "grants.sqlite"),
            settings=settings,
            v1_cutover_ms=None if s.v1_cutover is None else _utc_ms(s.v1_cutover),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _utc_ms(value: datetime) -> int:
    """Unix milliseconds of a settings time; one without a zone is read as UTC."""
    return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp() * 1000)
