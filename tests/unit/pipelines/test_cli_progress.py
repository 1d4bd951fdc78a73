"""On a non-terminal, long commands print a progress line (done, left, rate) instead of a bar."""

from __future__ import annotations

import io

from pipelines.cli.progress import LineProgress


def test_a_line_says_what_is_done_what_is_left_and_the_rate():
    out = io.StringIO()
    with LineProgress("pcc produce", total=300, every_s=0, stream=out) as progress:
        a = progress.add_task("cc-aurora", total=100)
        progress.update(a, completed=100, description="cc-aurora (2 checkpoints)")
        b = progress.add_task("garage-01", total=200)
        progress.update(b, completed=50)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("pcc produce: 100 done, 200 left of 300 (")
    assert "/s)" in lines[0] and lines[0].endswith("; cc-aurora (2 checkpoints)")
    assert lines[-1].startswith("pcc produce: 150 done, 150 left of 300 (")  # the last line, at the end


def test_nothing_is_printed_between_the_intervals():
    out = io.StringIO()
    progress = LineProgress("pcc produce", total=10, every_s=3600, stream=out)
    task = progress.add_task("cc-aurora", total=10)
    for n in range(10):
        progress.update(task, completed=n + 1)
    assert out.getvalue() == ""
    progress.line()
    assert out.getvalue().startswith("pcc produce: 10 done, 0 left of 10")
