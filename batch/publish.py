"""Publishing a batch version: the atomic swap of ``<batch_dir>/CURRENT.json``.

The manifest follows docs/contracts.md: version, published_at, the watermark
(up to which processed time / event time / Kafka offsets the version covers)
and each view's path relative to the batch directory.  It is written under a
temporary name, fsynced and renamed over the old one, so a reader sees either
the previous manifest or the new one, never a torn file.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batch.config import VIEWS, BatchConfig
from batch.errors import RunNotFoundError
from pipelines.layout import VERSION_MANIFEST, BatchManifest, version_dir


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_ms(ts: datetime | None) -> str | None:
    """RFC 3339 UTC with milliseconds and ``Z``, as every contract timestamp."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def new_version(started: datetime, fingerprint: str) -> str:
    """``YYYYMMDDTHHMMSSZ-xxxx``: start time, then 4 hex (input fingerprint, else random)."""
    tail = (fingerprint[:2] if fingerprint else "") + secrets.token_hex(1)
    return started.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + tail[:4]


def read_current(config: BatchConfig) -> BatchManifest | None:
    """The published manifest, or ``None`` when nothing was ever published."""
    return BatchManifest.load(config.current_file)


def manifest(version: str, watermark: dict[str, Any], extra: dict[str, Any] | None = None) -> BatchManifest:
    return BatchManifest.model_validate(
        {
            "version": version,
            "published_at": iso_ms(utc_now()),
            "watermark": watermark,
            "views": {view: str(version_dir(Path(), version) / view) for view in VIEWS},
            **(extra or {}),
        }
    )


def publish(config: BatchConfig, doc: BatchManifest) -> Path:
    """Make ``doc`` the published manifest (atomic pointer swap); its views must exist."""
    for view, path in doc.view_dirs(config.batch_dir).items():
        if not path.is_dir():
            raise RunNotFoundError(
                f"cannot publish version {doc.version}: view {view} is missing at {doc.views[view]}"
            )
    return doc.write(config.current_file)


def rollback_to(config: BatchConfig, version: str) -> BatchManifest:
    """Publish an older, audited version again (its stored manifest)."""
    stored = BatchManifest.load(config.version_dir(version) / VERSION_MANIFEST)
    if stored is None:
        raise RunNotFoundError(f"no audited batch version {version} under {config.versions_dir}")
    doc = stored.model_copy(update={"published_at": iso_ms(utc_now())})
    publish(config, doc)
    return doc


def store_manifest(config: BatchConfig, doc: BatchManifest) -> None:
    """Keep the version's manifest beside its views (what a rollback republishes)."""
    doc.write(config.version_dir(doc.version) / VERSION_MANIFEST)
