"""Settings of the alert service, derived once from the platform's :class:`Settings`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import model_validator

from pipelines.alerts import alerts_topic, trusted_raisers
from pipelines.settings import AlertsSettings, Settings


class AlertsConfig(AlertsSettings):
    """Everything the alert service needs: the ``alerts`` settings and what is derived from the rest.

    Built by :meth:`from_settings` and passed in; frozen like the settings.
    """

    data_dir: Path
    bootstrap: str = "127.0.0.1:9092"  # kafka.bootstrap
    topic: str = "pcc.alerts"  # the alerts topic under kafka.topic_prefix
    #: http:// and loopback destinations are allowed: ``mode == "development"``.  Either may be
    #: given to the constructor and the other follows (tests and demos set ``development=True``)
    development: bool = False
    max_request_age_s: int = 300  # serving.max_request_age_s: signed requests share one limit
    consumer_group: str = "pcc-alerts"  # the Kafka group the feed reads the alerts topic in
    #: public keys (hex, lower case, no 0x) of the layers whose signed alerts are delivered and billed:
    #: ``alerts.trusted_raisers``, else this deployment's own raiser key; none: nothing is
    trusted_raisers: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _development_is_mode(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("mode" in data) != ("development" in data):
            data = dict(data)
            if "development" in data:
                data["mode"] = "development" if data["development"] else "production"
            else:
                data["development"] = data["mode"] == "development"
        return data

    @model_validator(mode="after")
    def _one_mode(self) -> AlertsConfig:
        if self.development != (self.mode == "development"):
            raise ValueError(f"development={self.development} contradicts mode={self.mode!r}")
        return self

    @property
    def request_host(self) -> str:
        return self.public_host or f"{self.host}:{self.port}"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "alerts"

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertsConfig:
        return cls(
            **settings.alerts.model_dump(exclude={"trusted_raisers"}),
            trusted_raisers=trusted_raisers(settings),
            data_dir=settings.data_dir.resolve(),
            bootstrap=settings.kafka.bootstrap,
            topic=alerts_topic(settings.kafka.topic_prefix),
            max_request_age_s=settings.serving.max_request_age_s,
        )
