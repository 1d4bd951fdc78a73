"""Configuration of the batch layer, derived once from the platform :class:`Settings`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import model_validator

from pipelines import layout
from pipelines.settings import BatchSettings, Settings

#: The batch views, in the order a run writes them (docs/contracts.md).
VIEWS: tuple[str, ...] = ("vehicle_history", "mileage_timeline", "fraud_scores", "source_reputation")


class BatchConfig(BatchSettings):
    """Where the batch layer reads and writes, and how it runs Spark: the ``batch`` settings with
    both directories settled.  Built by :meth:`from_settings` and passed in; frozen like the settings.

    The Spark master is ``master`` (``batch.master``); the constructor also takes it as
    ``spark_master``, the name a run records it under.
    """

    master_dataset: Path  # batch.master_dataset, else data_dir/master
    batch_dir: Path  # data_dir/batch: versions, CURRENT.json, the run history

    @model_validator(mode="before")
    @classmethod
    def _spark_master(cls, data: Any) -> Any:
        if isinstance(data, dict) and "spark_master" in data:
            if "master" in data:
                raise ValueError("give the Spark master as master or as spark_master, not both")
            data = {("master" if k == "spark_master" else k): v for k, v in data.items()}
        return data

    @classmethod
    def from_settings(cls, settings: Settings, spark_master: str | None = None) -> BatchConfig:
        b = settings.batch
        return cls(
            **b.model_dump(exclude={"master", "master_dataset"}),
            master=spark_master or b.master,
            master_dataset=layout.master_dir(settings.data_dir, b.master_dataset),
            batch_dir=layout.batch_dir(settings.data_dir),
        )

    @property
    def versions_dir(self) -> Path:
        return layout.versions_dir(self.batch_dir)

    @property
    def current_file(self) -> Path:
        return layout.current_file(self.batch_dir)

    @property
    def runs_file(self) -> Path:
        return self.batch_dir / "runs.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.batch_dir / ".run.lock"

    def version_dir(self, version: str) -> Path:
        return layout.version_dir(self.batch_dir, version)
