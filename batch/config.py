"""Configuration of the batch layer, derived once from the platform :class:`Settings`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.settings import Settings

#: The batch views, in the order a run writes them (docs/contracts.md).
VIEWS: tuple[str, ...] = ("vehicle_history", "mileage_timeline", "fraud_scores", "source_reputation")


@dataclass(frozen=True)
class BatchConfig:
    """Where the batch layer reads and writes, and how it runs Spark."""

    master_dataset: Path
    batch_dir: Path
    spark_master: str = "local[*]"
    driver_memory: str = "2g"
    shuffle_partitions: int = 8
    max_quarantined_files: int = 10
    timely_lag_s: int = 24 * 3600

    @classmethod
    def from_settings(cls, settings: Settings, spark_master: str | None = None) -> BatchConfig:
        b = settings.batch
        return cls(
            master_dataset=Path(b.master_dataset or settings.path("master")),
            batch_dir=settings.path("batch"),
            spark_master=spark_master or b.master,
            driver_memory=b.driver_memory,
            shuffle_partitions=b.shuffle_partitions,
            max_quarantined_files=b.max_quarantined_files,
            timely_lag_s=b.timely_lag_s,
        )

    @property
    def versions_dir(self) -> Path:
        return self.batch_dir / "versions"

    @property
    def current_file(self) -> Path:
        return self.batch_dir / "CURRENT.json"

    @property
    def runs_file(self) -> Path:
        return self.batch_dir / "runs.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.batch_dir / ".run.lock"

    def version_dir(self, version: str) -> Path:
        return self.versions_dir / version
