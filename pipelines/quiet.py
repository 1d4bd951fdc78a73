"""Third-party log lines a user cannot act on, dropped by their exact logger and text; every other is kept.

:func:`quiet_expected_warnings` adds one filter per line to the logger that emits it
(idempotent).  It is called at the edges that start an engine or a client: the ``pcc``
command's ``main()`` and the ``speed`` package, before anything in it imports Beam.
Spark's start-up lines are handled where Spark starts (``batch/session.py``).
"""

from __future__ import annotations

import logging
import re
from typing import NamedTuple


class ExpectedLine(NamedTuple):
    """A line a library logs in normal operation, and why it tells a PCC user nothing."""

    logger: str  # "" is the root logger
    pattern: re.Pattern[str]  # matched against the start of the formatted message
    why: str


EXPECTED: tuple[ExpectedLine, ...] = (
    ExpectedLine(
        "",
        re.compile(r"apitools not found, and bigquery client libraries are not available"),
        "apache-beam imports its BigQuery client on every start and says so when the [gcp] extra, "
        "which PCC does not use, is absent",
    ),
    ExpectedLine(
        "kafka.net.selector",
        re.compile(r"Task .* ran for \d+(\.\d+)?s \(>\d+(\.\d+)?s threshold\)"),
        "kafka-python times each step of its I/O loop against 0.1 s; on a busy machine a step "
        "waits for a CPU, which is not a fault of the client or the broker",
    ),
)


class _Drop(logging.Filter):
    """Drops the records of one :class:`ExpectedLine` (a filter on the logger that emits them)."""

    def __init__(self, line: ExpectedLine) -> None:
        super().__init__()
        self.line = line

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING or not self.line.pattern.match(record.getMessage())


def quiet_expected_warnings() -> None:
    """Filter the :data:`EXPECTED` lines out of their loggers; a no-op when already done."""
    for line in EXPECTED:
        logger = logging.getLogger(line.logger)
        if not any(isinstance(f, _Drop) and f.line == line for f in logger.filters):
            logger.addFilter(_Drop(line))
