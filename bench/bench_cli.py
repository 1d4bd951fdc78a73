"""How fast ``pcc`` starts, for commands that touch no heavy engine (target <= 1 s).

Figures (``python -m bench --only cli``, or ``python -m bench.bench_cli --repeat N``):
the wall time of a fresh ``pcc`` process, the best and the median of the runs
(default 7) per command, the commands taking turns so that a burst of load on
the shared machine hits them all alike:

- ``pcc --help``, ``pcc ledger --help``, ``pcc ledger register-source --help``,
  ``pcc market --help`` (help only: no settings, no engine);
- ``pcc schemas show envelope`` (a command that runs and reads no settings) and
  ``pcc chain status`` (one that reads the settings and asks the node's state
  files; no node is started).

Reference, measured in the same turns: ``python -c pass`` (the interpreter
alone) and ``python -c "import typer"`` (the command-line library alone).  The
ratio is ``pcc ledger register-source --help`` over ``python -c "import typer"``,
medians; the load average at the start and the end is recorded beside them, and
each command's CPU time (user + system, median), which a loaded machine inflates
less than the wall time.

``python -X importtime -m pipelines.cli.main ledger --help 2>&1 | sort -t'|' -k2 -n``
shows where the time of one start goes.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import record

PCC = str(Path(sys.executable).with_name("pcc"))

COMMANDS: dict[str, list[str]] = {
    "pcc --help": [PCC, "--help"],
    "pcc ledger --help": [PCC, "ledger", "--help"],
    "pcc ledger register-source --help": [PCC, "ledger", "register-source", "--help"],
    "pcc market --help": [PCC, "market", "--help"],
    "pcc schemas show envelope": [PCC, "schemas", "show", "envelope"],
    "pcc chain status": [PCC, "chain", "status"],
}
REFERENCES: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import typer'": [sys.executable, "-c", "import typer"],
}


def _once(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # exit codes are not checked: `pcc chain status` exits 6 when no node runs, which is the case here
    subprocess.run(cmd, capture_output=True, env=env, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(repeat: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per run of every command and reference, in turns (one run of each per turn)."""
    wall: dict[str, list[float]] = {name: [] for name in (*REFERENCES, *COMMANDS)}
    cpu: dict[str, list[float]] = {name: [] for name in (*REFERENCES, *COMMANDS)}
    with tempfile.TemporaryDirectory(prefix="pcc-bench-cli-") as tmp:
        env = {**os.environ, "PCC__DATA_DIR": tmp, "COLUMNS": "100"}
        for cmd in {**REFERENCES, **COMMANDS}.values():  # one warm-up: the page cache, not the timings
            _once(cmd, env)
        for _ in range(repeat):
            for name, cmd in {**REFERENCES, **COMMANDS}.items():
                w, c = _once(cmd, env)
                wall[name].append(w)
                cpu[name].append(c)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="more turns at a larger scale")
    parser.add_argument("--repeat", type=int, default=None, help="turns (default 7 x scale, at least 3)")
    args = parser.parse_args(argv)
    repeat = args.repeat or max(3, round(7 * args.scale))
    load_before = os.getloadavg()[0]
    runs, cpu = measure(repeat)
    load_after = os.getloadavg()[0]
    figures: dict[str, float | str | int] = {}
    for name in COMMANDS:
        figures[f"{name} median_s"] = round(statistics.median(runs[name]), 3)
        figures[f"{name} best_s"] = round(min(runs[name]), 3)
        figures[f"{name} cpu_s"] = round(statistics.median(cpu[name]), 3)
    figures["turns"] = repeat
    figures["load_1min"] = f"{load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cpu"
    figures["ratio_is"] = "median pcc ledger register-source --help / median python -c 'import typer'"
    reference: dict[str, float] = {"target_s": 1.0}
    for name in REFERENCES:
        reference[f"{name} median_s"] = round(statistics.median(runs[name]), 3)
        reference[f"{name} best_s"] = round(min(runs[name]), 3)
        reference[f"{name} cpu_s"] = round(statistics.median(cpu[name]), 3)
    ratio = statistics.median(runs["pcc ledger register-source --help"]) / statistics.median(
        runs["python -c 'import typer'"]
    )
    record("pcc_cold_start_s", figures, reference, ratio=ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
