"""The demo's fraud table: per kind, the rules' figures with the naive check's recall beside them."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from batch.evaluate import evaluate
from infra.demo import DemoResult
from infra.demo_report import print_summary
from pipelines.simulator.evaluation import Case


def test_the_fraud_table_puts_the_naive_check_beside_each_kind() -> None:
    clone = Case("cloned_identity", (("connected", "no"),), True)
    hidden = Case("rollback_before_sale", (("history", "none"),), False)
    scores = {"v1": ("fraudulent", {"interleaved_odometers"}), "v2": ("clean", set()), "v3": ("clean", set())}
    evaluation = evaluate(scores, {"v1": [clone], "v2": [hidden], "v3": []}, {"v1": True, "v3": True})
    result = DemoResult(settings=None, fleet_dir=Path("fleet"), evaluation=evaluation)  # type: ignore[arg-type]
    console = Console(record=True, width=220)
    print_summary(result, console)
    text = console.export_text()
    assert "naive recall" in text and "recall (detectable)" in text
    clone_row = next(line for line in text.splitlines() if "cloned_identity" in line)
    assert [cell.strip() for cell in clone_row.split("│")[1:9]] == [
        "cloned_identity", "1", "1", "0", "100%", "100%", "100% of 1", "100%"
    ]  # fmt: skip
    rollback_row = next(line for line in text.splitlines() if "rollback_before_sale" in line)
    assert " - " in rollback_row  # no case the data can show: no detectable recall to claim
    assert "the naive check flags 100.0%" in text


def test_replays_stopped_as_duplicate_dead_letters_are_reported_as_caught() -> None:
    replay = Case("replay", (("copies", "2"),), True)
    scores = {"v1": ("clean", set()), "v2": ("clean", set())}
    evaluation = evaluate(scores, {"v1": [replay], "v2": []}, {"v2": True})
    result = DemoResult(settings=None, fleet_dir=Path("fleet"), evaluation=evaluation)  # type: ignore[arg-type]
    result.dead_letters = [("duplicate_event", "e1"), ("duplicate_event", "e2"), ("duplicate_event", "e3")]
    result.dead_letters.append(("bad_hash", "e4"))
    result.injected = [
        ("duplicate_event", "e3"),
        ("bad_hash", "e4"),
    ]  # the demo's own replay is not the fleet's
    console = Console(record=True, width=240)
    print_summary(result, console)
    text = console.export_text()
    replay_row = next(line for line in text.splitlines() if line.strip().startswith("│ replay"))
    assert "2 events (duplicate_event)" in replay_row
    assert "2 replayed events of the fleet were refused by the speed layer" in " ".join(text.split())
