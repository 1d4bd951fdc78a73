"""The history of batch runs: one JSON line per run in ``<batch_dir>/runs.jsonl``.

Each record says when the run started and ended, its duration, rows in and
out, the audit result, the version, whether it was published, and why not.
A lock file keeps two runs from writing the same batch directory at once.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from batch.config import BatchConfig
from batch.errors import RunInProgressError


@dataclass
class RunRecord:
    run_id: str
    version: str
    started: str
    ended: str | None = None
    duration_s: float | None = None
    status: str = "running"  # published | audit_failed | failed | up_to_date
    published: bool = False
    rows_in: int = 0
    rows_out: dict[str, int] = field(default_factory=dict)
    audit: dict[str, Any] | None = None
    quarantined: list[dict[str, str]] = field(default_factory=list)
    watermark: dict[str, Any] | None = None
    master: str = ""
    spark_master: str = ""
    fingerprint: str = ""
    error: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, Any] | None = None  # bucketed master: buckets recomputed, partly redone, carried over
    compacted: int = 0  # master files merged by the compaction at the start of the run
    pruned: list[str] = field(default_factory=list)  # versions removed by batch.keep_versions
    #: rows left out because another vehicle keeps their event id (batch.reused; the first 100 listed)
    set_aside: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def append_run(config: BatchConfig, record: RunRecord) -> None:
    config.batch_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record.as_dict(), sort_keys=True) + "\n"
    with open(config.runs_file, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_runs(config: BatchConfig, limit: int | None = None) -> list[dict[str, Any]]:
    """Past runs, oldest first (the last ``limit`` if given)."""
    try:
        lines = config.runs_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    runs = [json.loads(line) for line in lines if line.strip()]
    return runs[-limit:] if limit else runs


@contextmanager
def run_lock(config: BatchConfig) -> Iterator[None]:
    """Hold the batch directory's run lock, or fail at once if another run holds it."""
    config.batch_dir.mkdir(parents=True, exist_ok=True)
    with open(config.lock_file, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInProgressError(
                f"another batch run is in progress on {config.batch_dir} (lock {config.lock_file})"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
