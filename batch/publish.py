"""Publishing a batch version: the atomic swap of ``<batch_dir>/CURRENT.json``.

The manifest follows docs/contracts.md: version, published_at, the watermark
(up to which processed time / event time / Kafka offsets the version covers)
and each view's path relative to the batch directory.  It is written under a
temporary name, fsynced and renamed over the old one, so a reader sees either
the previous manifest or the new one, never a torn file.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batch.config import VIEWS, BatchConfig
from batch.errors import RunNotFoundError
from pipelines.files import atomic_write


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


def read_current(config: BatchConfig) -> dict[str, Any] | None:
    """The published manifest, or ``None`` when nothing was ever published."""
    try:
        return json.loads(config.current_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def manifest(version: str, watermark: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "version": version,
        "published_at": iso_ms(utc_now()),
        "watermark": watermark,
        "views": {view: f"versions/{version}/{view}" for view in VIEWS},
        **(extra or {}),
    }


def publish(config: BatchConfig, doc: dict[str, Any]) -> Path:
    """Make ``doc`` the published manifest (atomic pointer swap); its views must exist."""
    for view, rel in doc["views"].items():
        if not (config.batch_dir / rel).is_dir():
            raise RunNotFoundError(
                f"cannot publish version {doc['version']}: view {view} is missing at {rel}"
            )
    atomic_write(config.current_file, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return config.current_file


def rollback_to(config: BatchConfig, version: str) -> dict[str, Any]:
    """Publish an older, audited version again (its stored manifest)."""
    stored = config.version_dir(version) / "_manifest.json"
    if not stored.exists():
        raise RunNotFoundError(f"no audited batch version {version} under {config.versions_dir}")
    doc = json.loads(stored.read_text(encoding="utf-8"))
    doc["published_at"] = iso_ms(utc_now())
    publish(config, doc)
    return doc


def store_manifest(config: BatchConfig, doc: dict[str, Any]) -> None:
    """Keep the version's manifest beside its views (what a rollback republishes)."""
    atomic_write(config.version_dir(doc["version"]) / "_manifest.json", json.dumps(doc, indent=2) + "\n")
