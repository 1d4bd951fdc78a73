"""The data directory's layout, named once, and the batch manifest every layer reads.

Under ``data_dir`` (docs/contracts.md)::

    master/                       the master dataset (speed writes, batch reads; ``batch.master_dataset``)
    realtime/                     the real-time view (speed writes, serving reads)
    batch/CURRENT.json            the published batch version (:class:`BatchManifest`)
    batch/versions/<version>/     its views, and ``_manifest.json``: the same manifest, kept for a rollback

The batch layer writes the manifest and the serving layer, the batch layer's
next run, the retention and the alerts read it: all through
:class:`BatchManifest`, so a field is spelled and typed in one place.  Unknown
members are kept (a newer writer's manifest stays readable and is written back
whole).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from pipelines.errors import PccValueError
from pipelines.files import atomic_write

MASTER = "master"
REALTIME = "realtime"
BATCH = "batch"
VERSIONS = "versions"
CURRENT = "CURRENT.json"
VERSION_MANIFEST = "_manifest.json"


def master_dir(data_dir: Path, configured: Path | None = None) -> Path:
    """The master dataset: ``configured`` (``batch.master_dataset``, the speed layer's ``master_root``) or ``data_dir/master``."""
    return configured or data_dir / MASTER


def realtime_dir(data_dir: Path) -> Path:
    return data_dir / REALTIME


def batch_dir(data_dir: Path) -> Path:
    return data_dir / BATCH


def versions_dir(batch: Path) -> Path:
    """Where the batch versions live, under the batch directory ``batch``."""
    return batch / VERSIONS


def version_dir(batch: Path, version: str) -> Path:
    return versions_dir(batch) / version


def current_file(batch: Path) -> Path:
    return batch / CURRENT


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Watermark(_Open):
    """Up to where a version covers the master dataset."""

    processed_time: str | None = None  # RFC 3339, ms
    event_time: str | None = None
    events: int = 0
    offsets: dict[str, int] = {}


class InputRecord(_Open):
    """The master dataset a version was computed from (a run with the same fingerprint is up to date)."""

    fingerprint: str
    files: int
    rows: int


class VersionLayout(_Open):
    """A version over a bucketed master: what each bucket's views were computed from."""

    buckets: int
    files: dict[str, list[str]] = {}  # bucket -> master file names read
    profile_sums: dict[str, list[float]] = {}  # bucket -> its share of the fleet's seasonal profile


class BatchManifest(_Open):
    """A batch version as ``CURRENT.json`` (and its ``_manifest.json``) describes it."""

    version: str
    published_at: str
    watermark: Watermark
    views: dict[str, str]  # view -> directory, relative to the batch directory
    input: InputRecord | None = None
    quarantined: list[dict[str, Any]] = []
    rows: dict[str, int] = {}
    fleet_profile: tuple[float, ...] | None = None
    layout: VersionLayout | None = None

    @field_validator("views")
    @classmethod
    def _inside_the_batch_directory(cls, views: dict[str, str]) -> dict[str, str]:
        for name, rel in views.items():
            path = Path(rel)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise ValueError(f"view {name} must be a path inside the batch directory, got {rel!r}")
        return views

    def view_dirs(self, batch: Path) -> dict[str, Path]:
        return {name: batch / rel for name, rel in self.views.items()}

    def dumps(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> BatchManifest | None:
        """The manifest at ``path``, ``None`` when there is none; a damaged one names the file and the member."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the document"
            raise PccValueError(f"{path}: {where}: {first['msg']}") from None

    def write(self, path: Path) -> Path:
        atomic_write(path, self.dumps())
        return path
