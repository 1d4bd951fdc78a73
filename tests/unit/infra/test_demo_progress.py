"""The demo's stream progress: events/s per stage, a plain line every 10 s off a terminal, and the
helper that runs the demo's start-up steps side by side."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from rich.console import Console

from infra.demo import DemoResult
from infra.demo_progress import Background, PlainProgress, StageMeter
from infra.demo_report import print_summary


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_meter_gives_events_per_second_per_stage_over_its_window() -> None:
    clock = FakeClock()
    meter = StageMeter(clock, window_s=10.0)
    meter.observe({"producers": 0, "Kafka": 0, "speed layer": 0})
    clock.now += 5
    meter.observe({"producers": 10_000, "Kafka": 9_000, "speed layer": 4_000})
    assert meter.rate("producers") == 2_000
    assert meter.rate("speed layer") == 800
    for _ in range(4):  # the window slides: the rate is the last ~10 s, not the average
        clock.now += 5
        meter.observe({"producers": meter.counts["producers"] + 1_000, "speed layer": 4_000})
    assert meter.rate("producers") == pytest.approx(200, rel=0.34)
    assert meter.rate("speed layer") == 0
    meter.finish("producers")
    assert meter.rate("producers") == 0  # done: no rate, its average until then
    assert meter.average("producers") == 14_000 / 25
    assert "done in 25 s" in meter.describe("producers")


def test_off_a_terminal_a_plain_line_with_rates_every_ten_seconds() -> None:
    clock = FakeClock()
    lines: list[str] = []
    meter = StageMeter(clock)
    plain = PlainProgress(lines.append, meter)
    for second in range(1, 26):  # the demo ticks about once a second
        clock.now += 1
        meter.observe({"producers": 1_500 * second, "Kafka": 1_400 * second, "speed layer": 900 * second})
        plain.tick("12 dead letters, lag 600")
    assert len(lines) == 2  # at 10 s and 20 s
    line = lines[-1]
    assert line.startswith("  stream 20 s: ")
    assert "producers 30,000 (1,500 events/s)" in line
    assert "Kafka 28,000 (1,400 events/s)" in line
    assert "speed layer 18,000 (900 events/s)" in line
    assert line.endswith("12 dead letters, lag 600")
    assert "\x1b" not in line  # plain text for a log file


def test_the_summary_reports_events_per_second_per_stage() -> None:
    result = DemoResult(settings=None, fleet_dir=Path("fleet"))  # type: ignore[arg-type]
    result.phases = [("stream", 60.0)]
    result.stages = {"producers": (60_000, 30.0), "speed layer": (60_004, 60.0)}
    console = Console(file=io.StringIO(), record=True, width=160)
    print_summary(result, console)
    text = console.export_text()
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 4}
    assert "2,000" in rows["producers"]
    assert "1,000" in rows["speed layer"]


def test_background_steps_run_side_by_side_and_raise_in_the_caller() -> None:
    both = threading.Barrier(2, timeout=30)  # each step waits for the other: only side by side passes
    first = Background(lambda: both.wait() + 1, "first")
    second = Background(lambda: both.wait() + 1, "second")
    assert sorted([first.result(), second.result()]) == [1, 2]

    def fails() -> None:
        raise RuntimeError("the chain node did not start")

    failing = Background(fails, "failing")
    with pytest.raises(RuntimeError, match="chain node"):
        failing.result()
