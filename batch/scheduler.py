"""A long-running scheduler: a batch run at every tick of a cron expression.

One SparkSession is kept for the scheduler's life, so the JVM start is paid
once.  A run that fails (audit or otherwise) is recorded in the run history
and the scheduler waits for the next tick; the previous version stays published.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from batch.config import BatchConfig
from batch.errors import BatchError
from batch.publish import utc_now
from pipelines.errors import PccError, PccValueError


def next_times(cron: str, start: datetime, count: int = 1) -> list[datetime]:
    """The next ``count`` fire times of ``cron`` after ``start`` (UTC)."""
    try:
        from croniter import croniter
    except ImportError as exc:
        raise BatchError(f"the scheduler needs croniter ({exc}); install the spark extra") from None
    if not croniter.is_valid(cron):
        raise PccValueError(f"invalid cron expression {cron!r} (five fields: minute hour day month weekday)")
    it = croniter(cron, start)
    return [it.get_next(datetime) for _ in range(count)]


def run_schedule(
    config: BatchConfig,
    cron: str,
    run: Callable[[], Any],
    on_event: Callable[[str], None] = print,
    max_runs: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] = utc_now,
) -> int:
    """Run ``run()`` at each tick of ``cron`` until interrupted (or ``max_runs``); returns runs done."""
    done = 0
    while max_runs is None or done < max_runs:
        (fire,) = next_times(cron, now())
        on_event(f"next batch run at {fire.isoformat()}")
        while (wait := (fire - now()).total_seconds()) > 0:
            sleep(min(wait, 30.0))
        try:
            record = run()
            on_event(f"run {record.version}: {record.status} in {record.duration_s}s")
        except PccError as exc:  # recorded in the run history by run_batch; keep the schedule
            on_event(f"run failed: {exc}")
        done += 1
    return done
