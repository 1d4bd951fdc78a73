"""Starting quietly: the log lines a user cannot act on are dropped, every other warning is kept."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.quiet import EXPECTED, quiet_expected_warnings

ROOT = Path(__file__).resolve().parents[3]

SLOW_TASK = (
    "Task <Task _poll_loop state=RUNNING> ran for 1.645s (>0.100s threshold). It is blocking the event "
    "loop -- likely a tight sync loop inside a coroutine. Other pollers will time out."
)
APITOOLS = (
    "apitools not found, and bigquery client libraries are not available despite the import not "
    "raising an ImportError."
)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    quiet_expected_warnings()


def test_installing_twice_adds_each_filter_once() -> None:
    quiet_expected_warnings()
    for line in EXPECTED:
        assert sum(getattr(f, "line", None) == line for f in logging.getLogger(line.logger).filters) == 1


def test_kafka_slow_task_line_is_dropped_other_selector_warnings_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("kafka.net.selector")
    with caplog.at_level(logging.WARNING):
        log.warning(SLOW_TASK)
        log.warning("Task <Task x> left RUNNING after step; demoting to UNSCHEDULED")
        log.error(SLOW_TASK)  # the same text at a higher level is not the expected line
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "Task <Task x> left RUNNING after step; demoting to UNSCHEDULED"),
        ("ERROR", SLOW_TASK),
    ]


def test_beam_optional_gcp_line_is_dropped_other_root_warnings_kept(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        logging.getLogger().warning(APITOOLS)
        logging.getLogger().warning("disk almost full")
        logging.getLogger("apache_beam").warning(APITOOLS)  # another logger: not the expected line
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("root", "disk almost full"),
        ("apache_beam", APITOOLS),
    ]


def test_importing_the_speed_layer_prints_no_beam_warning_but_keeps_real_ones() -> None:
    """A fresh interpreter, as ``pcc speed run`` and ``pcc demo`` start: Beam is imported by the layer."""
    pytest.importorskip("apache_beam")
    code = "import logging, speed.pipeline; logging.warning('a real warning')"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "apitools" not in out.stderr
    assert "a real warning" in out.stderr
