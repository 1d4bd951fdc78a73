"""Platform settings: one frozen model, read from the environment in one place.

Environment names are nested with a double underscore, e.g.
``PCC__KAFKA__BOOTSTRAP=127.0.0.1:9092`` or ``PCC__LEDGER__RPC_URL=http://...``.
An optional TOML file (``PCC_CONFIG=path`` or ``--config path``) supplies
values below the environment.  Defaults run everything embedded on this
machine: the project's own Kafka broker, a local chain node, ``local[*]``
Spark and DuckDB files under ``data_dir``.

Only :func:`load_settings` reads the environment; everything else receives a
``Settings`` object.
"""

from __future__ import annotations

import os
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipelines.errors import PccConfigError


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    bootstrap: str = "127.0.0.1:9092"
    controller_port: int = 9093
    home: Path | None = None  # where the broker keeps jars, logs and data; default data_dir/kafka
    topic_prefix: str = "pcc."
    partitions: int = 4
    retention_ms: int = 7 * 24 * 3600 * 1000
    heap: str = "512m"
    libs_dir: Path | None = None  # where the broker jars are cached; default home/libs
    # the producers' client: librdkafka (confluent-kafka) or kafka-python, same guarantees and
    # partitioning; docs/kafka.md, "The producer SDK against the bare client"
    producer_client: Literal["confluent-kafka", "kafka-python"] = "confluent-kafka"


class LedgerSettings(_Section):
    # the one chain endpoint: `pcc chain up` listens on its port when it is local (127.0.0.1/localhost)
    rpc_url: str = "http://127.0.0.1:8545"
    chain: str = "anvil"  # anvil | hardhat | evm (in-process) | rpc (any endpoint)
    deployer_key: SecretStr | None = None
    manifest: Path | None = None  # deployment manifest; default data_dir/ledger/deployment.json
    confirmations: int = 0
    anchor_key: SecretStr | None = None  # a producer's signing key; dev chains derive one per source

    @model_validator(mode="before")
    @classmethod
    def _port_follows_rpc_url(cls, data: Any) -> Any:
        """``ledger.port`` is gone: accepted only when it says what ``rpc_url`` already says."""
        if isinstance(data, dict) and "port" in data:
            data = dict(data)
            port = data.pop("port")
            url = str(data.get("rpc_url", "http://127.0.0.1:8545"))
            if urlsplit(url).port != int(port):
                raise ValueError(
                    f"ledger.port ({port}) is no longer a setting: the local node listens on the port of "
                    f"ledger.rpc_url ({url}); set rpc_url = 'http://127.0.0.1:{port}' instead"
                )
        return data


class ProducerSettings(_Section):
    source_id: str = "manual-01"
    checkpoint_every: int = 1024  # anchor a checkpoint every N events...
    checkpoint_seconds: float = 5.0  # ...or every T seconds, whichever comes first
    # an unreachable ledger: events keep being accepted into the log and wait for their anchor
    # (retried with backoff); closing the producer waits this long for it before leaving them to the next run
    anchor_wait_s: float = 300.0
    max_payload_bytes: int = 16 * 1024
    future_tolerance_s: int = 300
    # 2: protected fields leave the producer only as commitments and sealed values (docs/events.md);
    # 1: the clear envelope of the first contract (refused by the speed layer after speed.v1_cutover)
    contract_version: Literal[1, 2] = 2


class VaultSettings(_Section):
    path: Path | None = None  # default data_dir/vault/identity.sqlite
    key_file: Path | None = None  # default data_dir/vault/vault.key
    resolve_roles: tuple[str, ...] = ("vault-admin",)  # caller roles allowed to turn a pseudonym back into a VIN
    cache_size: int = 65_536  # in-memory VIN -> pseudonym entries per vault object
    cache_check_s: float = 1.0  # how stale a cached pseudonym may be after an erasure elsewhere


class SpeedSettings(_Section):
    runner: str = "FnApiRunner"
    # where per-vehicle state lives: "worker" (each worker process keeps the state of the vehicles
    # whose events it reads, in one fused stage) or "keyed" (Beam keyed state, keyed by vehicle,
    # behind a shuffle: right whichever worker reads which partition); docs/speed.md, "Keyed state"
    state: Literal["worker", "keyed"] = "worker"
    until_idle_s: float | None = None
    max_events: int | None = None
    metrics_port: int = 9464
    proof_wait_s: float = 10.0
    flush_interval_ms: int = 250  # real-time view flush period (contract: <= 500)
    master_flush_rows: int = 100_000  # the master dataset is written when this many rows wait...
    master_flush_interval_s: float = 60.0  # ... or the oldest has waited this long (and at stop)
    poll_max_records: int = 5000  # records per Kafka poll, emitted as one batch
    dedupe_window_s: int = 7 * 24 * 3600  # event ids remembered for replay detection (>= Kafka retention)
    consumer_group: str = "pcc-speed"  # offsets committed here (after durable writes) for lag monitoring
    # version 1 events (protected fields in clear) ingested at or after this time are refused
    # (dead letter retired_version); None: version 1 is still accepted
    v1_cutover: datetime | None = None
    # a worker's long-lived objects (per-vehicle state rebuilt from the master dataset, schemas,
    # caches) are frozen out of the cyclic garbage collector once loaded, and a collection starts
    # after this many new container objects instead of Python's 700: per-event garbage is freed
    # by reference counting, and collections scanning the state cost 13 % of the per-event time;
    # None leaves the collector as Python sets it
    gc_threshold: int | None = Field(default=50_000, ge=700)


class BatchSettings(_Section):
    master: str = "local[*]"
    driver_memory: str = "2g"
    master_dataset: Path | None = None  # the master dataset root; default data_dir/master
    shuffle_partitions: int = 8
    max_quarantined_files: int = 10  # more corrupt/drifted master files than this fails the audit
    timely_lag_s: int = 24 * 3600  # an event ingested within this lag of its event time is timely
    master_buckets: int = 64  # vehicle buckets pcc batch migrate-master lays the master dataset out in
    compact_files: int = 8  # a master bucket with more files is compacted into one at the start of a run
    keep_versions: int = 5  # batch versions kept (the published one and pinned ones always are)
    # how far (in the fleet profile's units, 1 = the year's mean rate) the seasonal profile measured
    # now may be from the one the published version was computed with before a run redoes every car;
    # within it the version's profile stays the reference, so a run after late events costs what changed
    profile_tolerance: float = Field(default=0.05, ge=0.0)


class ServingSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8600
    query_timeout_s: float = 10.0
    max_rows: int = 100_000
    signing_key: SecretStr | None = None  # the service's key that signs receipts; default a file under data_dir
    memory_limit: str = "2GB"  # DuckDB memory limit of the query engine
    threads: int = 2  # DuckDB worker threads
    max_request_age_s: int = 300  # a signed request may not expire later than this
    refresh_s: float = 0.25  # how often new real-time segments and batch versions are picked up
    # an idle service answers query shapes that have been fast in its event loop (no thread hand-off),
    # stopping such a run at this budget and finishing it in a worker thread; 0 turns this off
    inline_budget_ms: float = 20.0
    quality_weight_bps: int = 0  # 0: flat price per row; 10000: price proportional to the quality index
    settle_every_s: float = 30.0  # how often pending receipts are settled on the Marketplace
    gdpr_operators: tuple[str, ...] = ()  # accounts acting for authenticated owners (grants, GDPR)
    max_body_bytes: int = 64 * 1024  # a larger request body is refused (413) before it is read further
    # funds held from a consumer's free balance before its query runs, when neither the request's
    # max_cents nor an earlier run of the same query shape says more; at the end the hold is topped
    # up to the price from what is still free, atomically, else the query is refused (402)
    hold_cents: int = 1
    max_in_flight: int = 4  # queries one consumer may have running at once (429 past it)
    rate_per_s: float = 50.0  # requests per second one consumer may send, with bursts of rate_burst (429)
    rate_burst: int = 100
    # the host[:port] (or URL) consumers reach the service at; signed into every request (EIP-712)
    # so a request cannot be used at another service; default host:port
    public_host: str | None = None
    # the EIP-712 chain id of signed requests when billing is offline (no deployment); with a
    # ledger deployment its own chain id and Marketplace address are used
    local_chain_id: int = 31337


class IngestSettings(_Section):
    """The HTTP ingest bridge (``pcc ingest serve``, or ``pcc serve --ingest`` under /v1/events)."""

    host: str = "127.0.0.1"
    port: int = 8610
    # the host[:port] (or URL) producers reach the bridge at, signed into every request; default host:port
    public_host: str | None = None
    max_body_bytes: int = 1024 * 1024  # a larger batch is refused (413) before it is read further
    max_lines: int = 1000  # a batch of more JSON Lines is refused (413) before any is parsed
    max_queued: int = 4  # batches of one source waiting behind the one being anchored (429 past it)
    publish_timeout_s: float = 30.0  # how long Kafka may take to acknowledge a batch (> 10 s)
    retry_after_s: int = 5  # Retry-After of a 429 or 503; also how often a down broker is retried


class AlertsSettings(_Section):
    """The alert service (``pcc alerts serve``): subscriptions and signed webhooks."""

    host: str = "127.0.0.1"
    port: int = 8620
    # the host[:port] subscribers reach the service at, signed into every request; default host:port
    public_host: str | None = None
    # production: destinations must be https:// and resolve to public addresses only;
    # development: also http:// and https:// to loopback (a receiver on this machine)
    mode: Literal["production", "development"] = "production"
    # a larger request body is refused (413) before it is read further: 10,000 vehicles fit
    max_body_bytes: int = 512 * 1024
    timeout_s: float = 5.0  # one delivery attempt
    retry_base_s: float = 1.0  # first retry after about this, doubling each time (with jitter)
    retry_max_s: float = 3600.0  # the longest wait between two attempts
    retry_window_s: float = 24 * 3600.0  # after this a failing delivery is parked (pcc alerts redeliver)
    per_destination: int = 4  # deliveries in flight to one destination at once
    # the key the speed and batch layers sign alerts with (Ed25519, 64 hex digits); default a key
    # file under data_dir (alerts/raiser.key), created on first use
    raiser_key: SecretStr | None = None
    # public keys (hex) whose signed alerts the service delivers and bills; default this data_dir's
    # raiser key.  Anything else written to the alerts topic is dropped, never sent nor paid
    trusted_raisers: tuple[str, ...] = ()


class AccessSettings(_Section):
    # grants and key epochs: on the ledger's AccessRegistry (chain), in a SQLite file beside the
    # vault (sqlite), or auto = chain when a ledger deployment manifest exists, else sqlite
    grant_store: Literal["auto", "chain", "sqlite"] = "auto"
    cache_s: float = 1.0  # how stale on-chain grants and key epochs may be when read


class Settings(BaseSettings):
    """Every setting of the platform, grouped by layer."""

    model_config = SettingsConfigDict(
        env_prefix="PCC__",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    data_dir: Path = Path(".pcc")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    producer: ProducerSettings = Field(default_factory=ProducerSettings)
    vault: VaultSettings = Field(default_factory=VaultSettings)
    speed: SpeedSettings = Field(default_factory=SpeedSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (the TOML file, passed in by load_settings) < environment
        return (env_settings, init_settings)

    def path(self, *parts: str) -> Path:
        """A path under the data directory, created on demand by callers."""
        return self.data_dir.joinpath(*parts)


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read settings from an optional TOML file and the environment.

    This is the one function that reads the environment.  A wrong key or value
    raises :class:`PccConfigError` naming the file (or the environment) and the key.
    """
    file = config_file or os.environ.get("PCC_CONFIG")
    values: dict[str, Any] = {}
    origin = "environment (PCC__...)"
    if file:
        path = Path(file)
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PccConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise PccConfigError(f"config file {path} is not valid TOML: {exc}") from None
        origin = f"{path} or the environment"
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        ]
        raise PccConfigError(f"invalid settings in {origin}: " + "; ".join(problems)) from None
