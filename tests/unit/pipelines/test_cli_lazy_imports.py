"""``pcc`` starts without its engines: what each help screen imports, checked in a fresh interpreter.

A structural guard, not a stopwatch (bench/bench_cli.py measures the time): the
root's ``--help`` imports no layer at all, and a layer's ``--help`` imports its
command module but no engine (web3, DuckDB, Arrow, Beam, Spark, kafka-python,
pandas) and not the settings model (pydantic-settings); those are imported by
the commands that run.  The help screens of the root and the ledger's groups
import neither pydantic (Typer coerces option values with it: none is given)
nor rich (help is plain text).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

ENGINES = (
    "web3",
    "eth_account",
    "duckdb",
    "pyarrow",
    "apache_beam",
    "pyspark",
    "kafka",
    "pandas",
    "numpy",
    "fastapi",
    "uvicorn",
    "pydantic_settings",
)
LAYERS = ("ledger", "serving", "speed", "batch", "infra")
HELP_ONLY = ("pydantic", "rich")



def loaded_after(*args: str) -> set[str]:
    """Top-level packages in sys.modules after ``pcc ARGS`` ran in a fresh interpreter."""
    code = (
        "import json, sys\n"
        "from pipelines.cli.main import main\n"
        f"code = main({list(args)!r})\n"
        "print(json.dumps([code, sorted({m.split('.')[0] for m in sys.modules})]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    exit_code, modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert exit_code == 0, done.stderr
    return set(modules)


def test_the_root_help_imports_no_layer_and_no_engine():
    loaded = loaded_after("--help")
    assert not loaded & set(ENGINES), loaded & set(ENGINES)
    assert not loaded & set(LAYERS), loaded & set(LAYERS)
    assert not loaded & set(HELP_ONLY), loaded & set(HELP_ONLY)


@pytest.mark.parametrize(
    "args",
    [
        ("ledger", "--help"),
        ("ledger", "register-source", "--help"),
        ("ledger", "register-sources", "--help"),
        ("governance", "prices", "--help"),
        ("market", "deposit", "--help"),
    ],
    ids=" ".join,
)
def test_a_ledger_help_imports_no_engine(args: tuple[str, ...]):
    loaded = loaded_after(*args)
    assert not loaded & set(ENGINES), loaded & set(ENGINES)
    assert not loaded & set(HELP_ONLY), loaded & set(HELP_ONLY)


@pytest.mark.parametrize("layer", sorted(ep.name for ep in entry_points(group="pcc.commands")))
def test_every_layer_help_imports_no_engine(layer: str):
    loaded = loaded_after(layer, "--help")
    assert not loaded & set(ENGINES), loaded & set(ENGINES)


def test_a_layer_help_line_is_read_from_its_source():
    """The root lists each layer with the help its own module declares, without importing it."""
    from pipelines.cli.lazy import help_from_source

    by_name = {ep.name: ep for ep in entry_points(group="pcc.commands")}
    assert help_from_source(by_name["ledger"]) == "Deploy and operate the ledger contracts."
    produce_help = help_from_source(by_name["produce"])
    assert produce_help is not None and produce_help.startswith("Validate, pseudonymise")
