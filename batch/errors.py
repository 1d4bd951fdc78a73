"""Errors of the batch layer, all under the platform's one root :class:`PccError`."""

from __future__ import annotations

from pipelines.errors import PccError, PccNotFoundError, PccStateError, PccValueError


class BatchError(PccError):
    """A batch run could not complete."""


class SparkUnavailableError(BatchError, ImportError):
    """pyspark (or Great Expectations) is not installed: install the ``spark`` extra."""

    exit_code = 2


class MasterDatasetError(PccValueError):
    """The master dataset is missing or unusable as a whole (not one bad file: those are quarantined)."""


class AuditFailedError(BatchError):
    """The audit of a new version failed; the previous version stays published.

    ``failures`` lists each failed expectation as ``view: expectation (details)``.
    """

    exit_code = 7

    def __init__(self, version: str, failures: list[str], docs: str | None = None) -> None:
        self.version = version
        self.failures = list(failures)
        self.docs = docs
        detail = "; ".join(self.failures[:10])
        more = f" (+{len(self.failures) - 10} more)" if len(self.failures) > 10 else ""
        where = f"; data docs: {docs}" if docs else ""
        super().__init__(f"audit of batch version {version} failed, not published: {detail}{more}{where}")


class RunNotFoundError(PccNotFoundError):
    """No batch run or version with that name."""


class RunInProgressError(PccStateError):
    """Another batch run holds the lock on the batch directory."""
