"""Settings of the serving layer, derived once from the platform's :class:`Settings`."""

from __future__ import annotations

from pathlib import Path

from pipelines import layout
from pipelines.settings import ServingSettings, Settings


class ServingConfig(ServingSettings):
    """Everything the serving layer needs: the ``serving`` settings and where the data lives.

    Built by :meth:`from_settings` and passed in; frozen like the settings (change a copy with
    ``model_copy(update=...)``).  The signing key stays a ``SecretStr`` until receipts are signed.
    """

    data_dir: Path
    #: the master dataset (audit paths, GDPR), ``batch.master_dataset``; default data_dir/master
    master_root: Path | None = None

    @property
    def request_host(self) -> str:
        """The host every signed request names (``serving.auth.public_host`` normalises it)."""
        return self.public_host or f"{self.host}:{self.port}"

    @property
    def master_dir(self) -> Path:
        return layout.master_dir(self.data_dir, self.master_root)

    @property
    def realtime_dir(self) -> Path:
        return layout.realtime_dir(self.data_dir)

    @property
    def batch_dir(self) -> Path:
        return layout.batch_dir(self.data_dir)

    @property
    def state_dir(self) -> Path:
        """Where the service keeps its own files (version stores, receipts, key)."""
        return self.data_dir / "serving"

    @classmethod
    def from_settings(cls, settings: Settings) -> ServingConfig:
        return cls(
            **settings.serving.model_dump(),
            data_dir=settings.data_dir.resolve(),
            master_root=settings.batch.master_dataset,
        )
