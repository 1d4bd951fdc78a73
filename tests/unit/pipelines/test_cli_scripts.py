"""Long commands for scripts: ``--json`` puts one JSON document on stdout, ``--quiet`` prints
nothing but errors, and where nobody watches a terminal progress comes as lines, not a bar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli.main import main


def test_simulate_json_is_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    args = ["simulate", "--vehicles", "3", "--days", "60", "--seed", "4", "--out", str(tmp_path)]
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["vehicles"] == 3 and summary["events"] == sum(summary["by_source"].values()) > 0
    fleet = json.loads((tmp_path / "fleet.json").read_text())
    assert set(summary["by_source"]) <= {s["id"] for s in fleet["sources"]}
    # stderr is not a terminal here: a progress line, not a bar
    assert "pcc simulate: 3 done, 0 left of 3" in captured.err


def test_simulate_quiet_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    args = ["simulate", "--vehicles", "2", "--days", "30", "--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "fleet.json").is_file()


def test_an_error_still_reaches_a_quiet_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["simulate", "--start", "March", "--out", str(tmp_path), "--quiet"]) == 2
    assert "--start" in capsys.readouterr().err
