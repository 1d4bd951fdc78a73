"""Configuration of the speed layer, derived once from the platform :class:`Settings`."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

from pydantic import model_validator

from pipelines import layout
from pipelines.settings import Settings, SpeedSettings
from pipelines.topics import deadletter_topic, event_topics
from speed.errors import SpeedError

#: runners whose SDK worker runs in this process: nothing of an event leaves the machine before it is
#: sealed, and their watermark does not follow the source (speed.keyed)
LOCAL_RUNNERS = frozenset({"FnApiRunner", "PrismRunner"})


class SpeedConfig(SpeedSettings):
    """Everything a speed run needs: the ``speed`` settings and what is derived from the rest.

    Built by :meth:`from_settings` (tests and benches name the few they need) and passed in;
    frozen like the settings.
    """

    bootstrap: str  # kafka.bootstrap
    data_dir: Path
    topics: tuple[str, ...]  # the event topics under kafka.topic_prefix
    deadletter_topic: str  # the dead-letter topic under kafka.topic_prefix (alerts go beside it)
    #: speed.metrics_port, or None: no metrics endpoint (tests and benches)
    metrics_port: int | None = 9464  # type: ignore[assignment]
    worker: str = "w0"  # names this run's files in the sinks
    poll_timeout_ms: int = 2  # how long one Kafka poll waits for records
    #: ordering buffer: an event is applied once every partition read has passed its Kafka timestamp
    #: by this much (docs/speed.md, "Order across partitions"); None: each poll applied as it comes
    order_hold_ms: int | None = 0
    future_tolerance_s: float = 300.0  # producer.future_tolerance_s: how far ahead an event may be
    max_event_bytes: int = 16 * 1024  # producer.max_payload_bytes: a larger record is dead-lettered
    master_root: Path | None = None  # batch.master_dataset; default data_dir/master
    vault_path: Path | None = None  # identity vault (data keys); default data_dir/vault/identity.sqlite
    vault_key_file: Path | None = None  # default beside the vault file
    grants_path: Path | None = None  # grant store (key epochs); default data_dir/vault/grants.sqlite
    #: the whole settings: the grant store plugin (the ledger's AccessRegistry) is opened from them and
    #: alerts are signed with alerts.raiser_key; None: SQLite at grants_path, the raiser key file of data_dir
    settings: Settings | None = None
    pipeline_args: tuple[str, ...] = ()  # passed to Beam's PipelineOptions (Flink, Dataflow)

    @model_validator(mode="after")
    def _bounds(self) -> SpeedConfig:
        if not 0 < self.flush_interval_ms <= 500:
            raise SpeedError(f"speed.flush_interval_ms must be in (0, 500], got {self.flush_interval_ms}")
        if self.master_flush_rows <= 0 or self.master_flush_interval_s <= 0:
            raise SpeedError(
                "speed.master_flush_rows and speed.master_flush_interval_s must be positive, got "
                f"{self.master_flush_rows} and {self.master_flush_interval_s}"
            )
        if self.order_hold_ms is not None and self.order_hold_ms < 0:
            raise SpeedError(f"speed.order_hold_ms must be >= 0, got {self.order_hold_ms}")
        if self.max_events is not None and self.max_events <= 0:
            raise SpeedError(f"--max-events must be positive, got {self.max_events}")
        if self.state == "keyed" and self.runner not in LOCAL_RUNNERS and self.v1_cutover is None:
            # a version-1 event carries protected fields in clear until it is applied and sealed; with
            # keyed state it crosses the runner's shuffle and waits in its state backend (disk, checkpoints)
            raise SpeedError(
                f"speed.state keyed on {self.runner} moves events through the runner's shuffle and state "
                "backend before they are sealed: set speed.v1_cutover so that version-1 events (protected "
                "fields in clear) are refused, or keep speed.state worker"
            )
        return self

    @property
    def v1_cutover_ms(self) -> int | None:
        """``v1_cutover`` in Unix milliseconds; a time without a zone is read as UTC."""
        value = self.v1_cutover
        if value is None:
            return None
        return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp() * 1000)

    @property
    def realtime_dir(self) -> Path:
        return layout.realtime_dir(self.data_dir)

    @property
    def master_dir(self) -> Path:
        return layout.master_dir(self.data_dir, self.master_root)

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "speed"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> SpeedConfig:
        """The speed settings and what is derived from the rest; ``overrides`` that are not None win."""
        prefix = settings.kafka.topic_prefix
        derived: dict[str, object] = dict(
            bootstrap=settings.kafka.bootstrap,
            data_dir=settings.data_dir,
            topics=tuple(event_topics(prefix)),
            deadletter_topic=deadletter_topic(prefix),
            future_tolerance_s=float(settings.producer.future_tolerance_s),
            max_event_bytes=settings.producer.max_payload_bytes,
            master_root=settings.batch.master_dataset,
            vault_path=settings.vault.path or settings.path("vault", "identity.sqlite"),
            vault_key_file=settings.vault.key_file or settings.path("vault", "vault.key"),
            grants_path=settings.path("vault", "grants.sqlite"),
            settings=settings,
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls.model_validate(settings.speed.model_dump() | derived | given)
