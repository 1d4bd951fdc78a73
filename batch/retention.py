"""Pruning old batch versions: ``batch.keep_versions``, never the published one or a pinned one.

A version is a directory of view files; files carried over from an older
version are hard links, so removing a version frees only the files no kept
version shares.  Kept, whatever the setting: the published version (named by
``CURRENT.json``), and every version a running serving process has pinned.

Pins: a serving process writes ``<batch_dir>/pins/serving-<pid>.json``
(``{"pid": ..., "version": ...}``) before it loads a version and removes it
when it stops.  A pin whose process is gone is stale: it is ignored and
deleted.  A version directory without ``_manifest.json`` that is not the
newest (a failed or interrupted run) counts as a version like any other.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from batch.config import BatchConfig
from batch.publish import read_current
from pipelines.files import process_alive


def pinned_versions(batch_dir: Path) -> set[str]:
    """Versions pinned by a live serving process (stale pins are removed)."""
    out: set[str] = set()
    pins = batch_dir / "pins"
    if not pins.is_dir():
        return out
    for pin in pins.glob("*.json"):
        try:
            doc = json.loads(pin.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being written
        if process_alive(int(doc.get("pid", -1))):
            out.add(str(doc["version"]))
        else:
            pin.unlink(missing_ok=True)
    return out


def prune_versions(config: BatchConfig, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` versions, never the published or a pinned one; returns those removed."""
    if keep < 1 or not config.versions_dir.is_dir():
        return []
    current = read_current(config)
    protected = pinned_versions(config.batch_dir)
    if current is not None:
        protected.add(current.version)
    versions = sorted(
        d.name for d in config.versions_dir.iterdir() if d.is_dir()
    )  # names start with the time
    removed = []
    for version in versions[: max(0, len(versions) - keep)]:
        if version in protected:
            continue
        shutil.rmtree(config.versions_dir / version)
        shutil.rmtree(config.batch_dir / "audits" / version, ignore_errors=True)
        removed.append(version)
    return removed
