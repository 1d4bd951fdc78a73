"""The compiled fraud rules against the Python rules on the same histories, in the same run.

* ``rules.compiled``: time per event of :func:`pipelines.rules.kernels.assess_columns`
  (a vehicle's columns, as the batch pass has them from Arrow) against
  :func:`pipelines.rules.fraud.assess_vehicle` (the Python rules, their oracle,
  on the same events as ``EventFields``), best of 5 rounds taking turns; the
  ratio is Python / compiled (the issue's target: 20 or more).  Both give the
  same flags, evidence and score on every vehicle (checked here too).
* ``rules.speed_apply``: per event, the speed layer's stateful ``check_event`` against a compiled
  call over the ``n`` events one vehicle has in a poll (n = 1 … 32), what the speed layer would
  gain by calling the kernels (docs/batch.md, "The speed layer keeps the Python rules");
* ``rules.compile``: what the first call costs in a fresh process: with numba's
  on-disk cache cold (compiling every kernel) and warm (loading them), each
  measured in a subprocess with its own cache directory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

from bench.common import record
from pipelines.rules import EventFields, assess_vehicle, fields_from, sort_key
from pipelines.simulator import SimulationConfig, vehicle

_FIRST_CALL = """
import time
started = time.perf_counter()
from pipelines.rules.kernels import assess_columns, columns
from pipelines.rules import EventFields
assess_columns(columns([EventFields("a", "odometer_reading", 0, "s", 0, 10, 1.0, 2.0)]))
print(time.perf_counter() - started)
"""


def _histories(vehicles: int, seed: int = 9) -> list[list[EventFields]]:
    config = SimulationConfig(vehicles=vehicles, days=365, seed=seed, fraud_rate=0.3)
    out = []
    for i in range(vehicles):
        positions: Counter[str] = Counter()
        fields = []
        for e in vehicle(config, i)[0]:
            fields.append(fields_from(e, log_index=positions[str(e["source_id"])]))
            positions[str(e["source_id"])] += 1
        out.append(sorted(fields, key=sort_key))
    return out


def _first_call(cache_dir: str) -> float:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies the default fleet (300 vehicles)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pcc-numba-") as cache:
        cold = _first_call(cache)
        warm = _first_call(cache)
    record(
        "rules.compile",
        {"first_call_cold_s": round(cold, 2), "first_call_warm_s": round(warm, 2),
         "ratio_is": "cold / warm (numba cache=True: compiled once per environment)"},
        None,
        cold / warm,
    )  # fmt: skip

    from pipelines.rules.kernels import assess_columns, columns

    histories = _histories(max(30, int(300 * args.scale)))
    cols = [columns(h) for h in histories]
    events = sum(len(h) for h in histories)
    for h, c in zip(histories, cols, strict=True):  # the same answers, or the timing means nothing
        oracle, got = assess_vehicle(h), assess_columns(c)
        assert [x.flags for x in oracle.checked] == got.flags and oracle.score == got.score
    best = {"python": float("inf"), "compiled": float("inf")}
    for _ in range(args.rounds):  # taking turns: the machine is shared
        started = time.perf_counter()
        for h in histories:
            assess_vehicle(h)
        best["python"] = min(best["python"], time.perf_counter() - started)
        started = time.perf_counter()
        for c in cols:
            assess_columns(c)
        best["compiled"] = min(best["compiled"], time.perf_counter() - started)
    record(
        "rules.compiled",
        {"us_per_event": round(best["compiled"] / events * 1e6, 3), "events": events,
         "vehicles": len(histories), "ratio_is": "python us/event / compiled us/event (same run)"},
        {"python_us_per_event": round(best["python"] / events * 1e6, 2)},
        best["python"] / best["compiled"],
    )  # fmt: skip
    _speed_apply(histories, args.rounds)
    return 0


def _speed_apply(histories: list[list[EventFields]], rounds: int) -> None:
    """What the speed layer would gain by calling the kernels: per event, its own path (the state
    carried through :func:`pipelines.rules.check_event`, the flags it raises in real time) against a
    compiled call over a vehicle's ``n`` events of one poll (``columns`` + ``assess_columns``, which
    carry no state in or out: a lower bound of what a stateful kernel call would cost)."""
    from pipelines.rules import EMPTY_STATE, check_event
    from pipelines.rules.kernels import assess_columns, columns

    figures: dict[str, float] = {}
    for n in (1, 2, 4, 8, 16, 32):
        groups = [h[:n] for h in histories if len(h) >= n]
        best = {"python": float("inf"), "compiled": float("inf")}
        for _ in range(rounds):
            started = time.perf_counter()
            for g in groups:
                state = EMPTY_STATE
                for e in g:
                    state, _, _ = check_event(state, e)
            best["python"] = min(best["python"], time.perf_counter() - started)
            started = time.perf_counter()
            for g in groups:
                assess_columns(columns(g))
            best["compiled"] = min(best["compiled"], time.perf_counter() - started)
        events = n * len(groups)
        figures[f"python_us_{n}"] = round(best["python"] / events * 1e6, 2)
        figures[f"compiled_us_{n}"] = round(best["compiled"] / events * 1e6, 2)
    record(
        "rules.speed_apply",
        {**figures, "ratio_is": "python us/event / compiled us/event, one event per vehicle and poll"},
        None,
        figures["python_us_1"] / figures["compiled_us_1"],
    )


if __name__ == "__main__":
    raise SystemExit(main())
