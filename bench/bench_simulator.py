"""Fleet simulator and fraud-rule costs: ``python -m bench.bench_simulator [--scale F] [--vehicles N] [--days D]``.

* ``simulator.write``: events/s of :func:`write_fleet` (generation + JSON Lines
  writing, one core) for a fleet of about 200k events (target: >= 50k events/s),
  against orjson-encoding and writing the same number of prebuilt events in the
  same run (the floor any writer pays); ratio = simulator rate / that rate.
* ``simulator.memory``: tracemalloc peak while streaming a fleet for D and 4D
  days, and for V and 4V vehicles; ratio = peak(4D) / peak(D).  The stream holds
  one vehicle at a time, so the peak follows one vehicle's life, not the fleet.
* ``rules.state``: bytes of a speed-layer :class:`VehicleState` after a year of
  a connected car, projected to 1M vehicles (budget: < 1 GB); ratio = projected
  bytes / 1 GB.  And ``rules.check_event``: events/s through :func:`check_event`
  against building the same :class:`EventFields` from the events (the input cost).
* ``rules.kernel``: time per event of the rules now against the rules before
  issue 22 (loaded from git history by :mod:`bench.rules_at`) on the same events in the same run,
  for the speed layer's :func:`check_event` and the batch's :func:`assess_vehicle`
  (a fleet with frauds, 45 % connected); ratio = now / before (<= 1: no worse).
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from bench.common import record
from pipelines.rules import EMPTY_STATE, EventFields, assess_vehicle, check_event, fields_from, sort_key
from pipelines.simulator import SOURCES, SimulationConfig, simulate, vehicle, write_fleet


def _write_rate(vehicles: int, days: int) -> tuple[int, float, list[dict]]:
    config = SimulationConfig(vehicles=vehicles, days=days, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = write_fleet(config, tmp)
        seconds = time.perf_counter() - started
        sample = []
        for name in ("garage-net-01", "ins-mutua", "manual-portal", "cc-aurora"):
            with (Path(tmp) / "events" / f"{name}.jsonl").open("rb") as f:
                sample += [orjson.loads(line) for line in islice(f, 5_000)]
    return summary.events, seconds, sample


def _encode_rate(sample: list[dict], count: int) -> float:
    with tempfile.TemporaryDirectory() as tmp, (Path(tmp) / "ref.jsonl").open("wb") as f:
        started = time.perf_counter()
        for i in range(count):
            f.write(orjson.dumps(sample[i % len(sample)], option=orjson.OPT_APPEND_NEWLINE))
        return count / (time.perf_counter() - started)


def _stream_peak(vehicles: int, days: int) -> int:
    tracemalloc.start()
    for _ in simulate(SimulationConfig(vehicles=vehicles, days=days, seed=2)):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def _state_bytes(states: int) -> tuple[float, float, float]:
    """Bytes per state after a year of a connected car; check_event and field-building rates."""
    config = SimulationConfig(vehicles=40, days=365, seed=3, fraud_rate=0.0, connected_share=1.0)
    histories = [vehicle(config, i)[0] for i in range(config.vehicles)]
    tiers = {s.id: s.tier for s in SOURCES}
    positions: Counter[str] = Counter()
    fields_lists = []
    started = time.perf_counter()
    for events in histories:
        fields = []
        for e in events:
            fields.append(
                fields_from(e, log_index=positions[str(e["source_id"])], tier=tiers[str(e["source_id"])])
            )
            positions[str(e["source_id"])] += 1
        fields_lists.append(fields)
    n_events = sum(len(f) for f in fields_lists)
    build_rate = n_events / (time.perf_counter() - started)
    started = time.perf_counter()
    finals = []
    for fields in fields_lists:
        state = EMPTY_STATE
        for f in fields:
            state = check_event(state, f)[0]
        finals.append(state)
    check_rate = n_events / (time.perf_counter() - started)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = []
    for i in range(states):  # rebuild fresh copies so nothing is shared with the originals
        s = finals[i % len(finals)]
        kept.append(
            type(s)(
                last_key=(s.last_key[0] + i, str(s.last_key[1]), s.last_key[2] + i, s.last_key[3] + "")
                if s.last_key
                else None,
                ref_km=s.ref_km + i if s.ref_km is not None else None,
                ref_ms=s.ref_ms + i,
                cand_km=None,
                cand_ms=s.cand_ms + i,
                lat=s.lat + i * 1e-9 if s.lat is not None else None,
                lon=s.lon + i * 1e-9 if s.lon is not None else None,
                loc_ms=s.loc_ms + i,
                wreck_ms=None,
                recent=bytes(s.recent[:-1]) + bytes([i % 256]),
                chains=pickle.loads(pickle.dumps(s.chains)),  # fresh objects, as a restored state has
            )
        )
    per_state = (tracemalloc.get_traced_memory()[0] - before) / states
    tracemalloc.stop()
    del kept
    return per_state, check_rate, build_rate


def _per_event_s(
    fns: dict[str, tuple[Callable[[list[Any]], object], list[list[Any]]]], rounds: int = 5
) -> dict[str, float]:
    """Best time per event of each function over ``rounds``, the functions taking turns (the machine is shared)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, (fn, histories) in fns.items():
            started = time.perf_counter()
            for h in histories:
                fn(h)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: best[name] / sum(len(h) for h in fns[name][1]) for name in fns}


def _kernel(vehicles: int) -> dict[str, float]:
    """Seconds per event of check_event and assess_vehicle, now and before, on the same histories."""
    from bench.rules_at import rules_at

    before = rules_at()

    config = SimulationConfig(vehicles=vehicles, days=365, seed=9, fraud_rate=0.3)
    histories = []
    for i in range(vehicles):
        positions: Counter[str] = Counter()
        fields = []
        for e in vehicle(config, i)[0]:
            fields.append(fields_from(e, log_index=positions[str(e["source_id"])]))
            positions[str(e["source_id"])] += 1
        histories.append(sorted(fields, key=sort_key))
    old = [[before.EventFields(*f) for f in h] for h in histories]

    def stream_now(h: list[EventFields]) -> None:
        state = EMPTY_STATE
        for f in h:
            state = check_event(state, f)[0]

    def stream_before(h: list[EventFields]) -> None:
        state = before.EMPTY_STATE
        for f in h:
            state = before.check_event(state, f)[0]

    times = _per_event_s(
        {
            "check_event_now": (stream_now, histories),
            "check_event_before": (stream_before, old),
            "assess_now": (assess_vehicle, histories),
            "assess_before": (before.assess_vehicle, old),
        }
    )
    return {"events": sum(len(h) for h in histories), **times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the default sizes")
    parser.add_argument("--vehicles", type=int, default=None, help="fleet for the rate (1,300: ~200k events)")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument(
        "--states", type=int, default=None, help="vehicle states measured for rules.state (50,000)"
    )
    args = parser.parse_args(argv)
    args.vehicles = args.vehicles or max(50, int(1_300 * args.scale))
    args.states = args.states or max(5_000, int(50_000 * args.scale))
    kernel_vehicles = max(30, int(300 * args.scale))  # rules.kernel: a fleet with frauds, ~45k events

    events, seconds, sample = _write_rate(args.vehicles, args.days)
    rate = events / seconds
    reference = _encode_rate(sample, events)
    record(
        "simulator.write",
        {"events": events, "vehicles": args.vehicles, "days": args.days, "events_per_s": round(rate),
         "ratio_is": "simulator events/s / orjson encode+write events/s"},
        {"orjson_write_events_per_s": round(reference)},
        rate / reference,
    )  # fmt: skip

    small_v, small_d = 50, args.days
    peak_d = _stream_peak(small_v, small_d)
    peak_4d = _stream_peak(small_v, 4 * small_d)
    peak_4v = _stream_peak(4 * small_v, small_d)
    record(
        "simulator.memory",
        {"peak_mib_4d": round(peak_4d / 2**20, 2), "peak_mib_4v": round(peak_4v / 2**20, 2),
         "ratio_is": "peak(4D) / peak(D)"},
        {"peak_mib_d": round(peak_d / 2**20, 2), "vehicles": small_v, "days": small_d},
        peak_4d / peak_d,
    )  # fmt: skip

    per_state, check_rate, build_rate = _state_bytes(args.states)
    projected = per_state * 1_000_000
    record(
        "rules.state",
        {"bytes_per_vehicle": round(per_state), "projected_gib_1m": round(projected / 2**30, 3),
         "ratio_is": "projected bytes for 1M vehicles / 1 GiB budget"},
        {"budget_gib_1m": 1.0},
        projected / 2**30,
    )  # fmt: skip
    record(
        "rules.check_event",
        {"events_per_s": round(check_rate), "ratio_is": "check_event events/s / fields_from events/s"},
        {"fields_from_events_per_s": round(build_rate)},
        check_rate / build_rate,
    )
    k = _kernel(kernel_vehicles)
    for name in ("check_event", "assess"):
        now, before = k[f"{name}_now"], k[f"{name}_before"]
        record(
            f"rules.kernel.{name}",
            {
                "us_per_event": round(now * 1e6, 2),
                "events": k["events"],
                "ratio_is": "now / before (same run)",
            },
            {"us_per_event_before": round(before * 1e6, 2)},
            now / before,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
