"""The components a benchmark needs, started for its run and stopped after it, as the tests start theirs.

A benchmark runs on a fresh machine with nothing started by hand: it asks
:func:`bench_settings` for settings under its temporary directory (free ports,
the broker jars cached in ``infra/kafka/.cache/libs`` beside the tests'), and
:func:`running_broker` for a Kafka broker on them.  A developer's ``PCC__*``
environment is ignored (it would win over these values and point a benchmark at
another broker).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.kafka.config import PACKAGE_DIR
from infra.procs import free_ports
from pipelines.settings import KafkaSettings, Settings

#: The broker jars, shared with the tests (tests/fixtures/kafka.py): fetched once, git-ignored.
JAR_CACHE = PACKAGE_DIR / ".cache" / "libs"


def bench_settings(data_dir: Path, **sections: Any) -> Settings:
    """Settings under ``data_dir``, the broker on two free ports unless ``kafka`` names them.

    ``sections`` are further settings sections (``ledger={...}``, ``producer={...}``).
    """
    kafka = {"libs_dir": JAR_CACHE, **sections.pop("kafka", {})}
    if "bootstrap" not in kafka or "controller_port" not in kafka:
        port, controller = free_ports(2)
        kafka.setdefault("bootstrap", f"127.0.0.1:{port}")
        kafka.setdefault("controller_port", controller)
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("PCC__") or k == "PCC_CONFIG"}
    try:
        return Settings(data_dir=data_dir, kafka=KafkaSettings(**kafka), **sections)
    finally:
        os.environ.update(saved)


@contextmanager
def running_broker(settings: Settings, timeout: float = 180.0) -> Iterator[str]:
    """A Kafka broker of the benchmark's own on ``settings``; yields its bootstrap and stops it at the end."""
    from infra.kafka import Broker

    broker = Broker(settings)
    try:
        broker.start(wait=True, timeout=timeout)
        yield settings.kafka.bootstrap
    finally:
        broker.stop(timeout=30)  # SIGTERM, SIGKILL after the timeout
