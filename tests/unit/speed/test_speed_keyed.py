"""Keyed state: a vehicle's events meet its state behind a shuffle, in event order, whatever the routing.

The keyed stage (:class:`speed.keyed.ApplyKeyed`) is driven here as a runner
would: polls of three partitions in random orders and sizes, each vehicle's
events handed to its key after a random delay (still in the shuffle while
later polls are read), timers firing at random.  Its state and timer are the
only fakes; the checks, rules and release rule are the product's.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("apache_beam")

from apache_beam.utils.timestamp import Timestamp

from speed.keyed import ApplyKeyed
from speed.process import BatchResult, EventProcessor
from speed.runtime import Runtime, register, unregister
from speed.source import RunControl, register_control
from speed.state import InFlight, VehicleSlot
from tests.unit.speed.test_speed_order import PARTITIONS, _config, _records, flags_applied_at_once


class _State:
    """Beam's ReadModifyWriteState, pickled between bundles as a runner stores it."""

    def __init__(self) -> None:
        self._value: bytes | None = None

    def read(self) -> Any:
        import pickle

        return None if self._value is None else pickle.loads(self._value)

    def write(self, value: Any) -> None:
        import pickle

        self._value = pickle.dumps(value)


class _Timer:
    def __init__(self) -> None:
        self.at: Timestamp | None = None

    def set(self, ts: Timestamp) -> None:
        self.at = ts


def _keyed_run(tmp_path: Path, roots: Any, parts: Any, seed: int, hold_ms: int) -> dict[str, list[str]]:
    run_id = f"keyed-test-{seed}"
    config = _config(tmp_path, order_hold_ms=hold_ms, state="keyed")
    runtime = Runtime(EventProcessor(config, roots), sinks=None, in_flight=InFlight())  # type: ignore[arg-type]
    register(run_id, runtime)
    control = RunControl()
    register_control(run_id, control)
    control.expect(("pcc.telemetry", p) for p in range(PARTITIONS))
    fn = ApplyKeyed(config, lambda: roots, run_id)
    fn.setup()
    states: dict[str, _State] = {}
    timers: dict[str, _Timer] = {}
    rows: dict[str, list[str]] = {}
    handed: list[Any] = []  # the records whose outcome went to the sinks
    sent: list[Any] = []

    def outcome(out: Any) -> None:
        for records, result in out:
            assert isinstance(result, BatchResult)
            rows.update({r["event_id"]: r["flags"] for r in result.rows})
            handed.extend(records)

    def deliver(element: tuple[str, list[Any]]) -> None:
        vehicle = element[0]
        state, timer = states.setdefault(vehicle, _State()), timers.setdefault(vehicle, _Timer())
        outcome(fn.process(element, slot=state, wake=timer))

    def fire(vehicle: str) -> None:
        timer = timers[vehicle]
        if timer.at is not None:
            fired, timer.at = timer.at, None
            outcome(fn.on_release(fired=fired, slot=states[vehicle], wake=timer))

    rng = random.Random(seed * 11 + 3)
    cursor = [0] * PARTITIONS
    shuffle: list[tuple[str, list[Any]]] = []  # handed to the keys, not arrived yet
    try:
        while any(cursor[p] < len(parts[p]) for p in range(PARTITIONS)) or shuffle:
            p = rng.randrange(PARTITIONS)
            batch = parts[p][cursor[p] : cursor[p] + rng.randint(1, 4)]
            cursor[p] += len(batch)
            ready, _ = runtime.processor.check_batch(batch, int(time.time() * 1000))
            runtime.in_flight.sent(ev.record.timestamp_ms for ev in ready)  # type: ignore[union-attr]
            sent.extend(ev.record for ev in ready)
            by_vehicle: dict[str, list[Any]] = {}
            for ev in ready:
                by_vehicle.setdefault(ev.env["vehicle"], []).append(ev)
            shuffle += by_vehicle.items()
            control.advanced(("pcc.telemetry", p), batch[-1].timestamp_ms if batch else 1_000_000)
            rng.shuffle(shuffle)
            for _ in range(rng.randint(0, len(shuffle))):  # some arrive now, the rest later
                deliver(shuffle.pop())
            for vehicle in list(timers):
                if rng.random() < 0.3:
                    fire(vehicle)
        control.stop()  # the end of the run: the runner's watermark passes every timer
        for vehicle in list(timers):
            fire(vehicle)
    finally:
        unregister(run_id)
    assert all(s.read().held == [] for s in states.values())  # nothing is left held at the end
    assert sorted(handed) == sorted(sent)  # each event's outcome reaches the sinks once
    assert runtime.in_flight is not None and runtime.in_flight.earliest_in_transit() is None
    return rows


def test_keyed_state_gives_the_flags_of_applying_everything_at_once(tmp_path: Path) -> None:
    roots, parts = _records(5)
    want = flags_applied_at_once(tmp_path, roots, parts)
    for seed in range(6):
        assert _keyed_run(tmp_path, roots, parts, seed, hold_ms=1_000) == want


def test_a_key_takes_the_state_the_restart_rebuilt_on_its_first_event(tmp_path: Path) -> None:
    roots, parts = _records(7)
    records = sorted((r for p in parts for r in p), key=lambda r: r.timestamp_ms)
    first = EventProcessor(_config(tmp_path), roots)
    done = first.process_batch(records[:12], int(time.time() * 1000))
    restarted = EventProcessor(_config(tmp_path, state="keyed"), roots)
    master_rows = done.rows  # what the sinks wrote before the restart
    restarted.restore(master_rows)
    slots = restarted.slots(master_rows)
    assert set(slots) == {r["vehicle"] for r in done.rows}
    # a replay of an accepted event after the restart is refused by its vehicle's slot alone
    replayed = done.rows[0]
    assert slots[replayed["vehicle"]].origin_of(replayed["event_id"]) is not None
    whole = first.process_batch(records[12:], int(time.time() * 1000))
    keyed = BatchResult()
    ready, _ = restarted.check_batch(records[12:], int(time.time() * 1000))
    for vehicle in {ev.env["vehicle"] for ev in ready}:
        slot = slots.get(vehicle) or VehicleSlot(3600_000)
        mine = [ev for ev in ready if ev.env["vehicle"] == vehicle]
        restarted.apply(mine, int(time.time() * 1000), keyed, seen=slot, vehicles=slot)
    assert sorted((r["event_id"], r["flags"]) for r in keyed.rows) == sorted(
        (r["event_id"], r["flags"]) for r in whole.rows
    )


def test_the_cli_takes_the_state_shape_and_refuses_an_unknown_one() -> None:
    from typer.testing import CliRunner

    from pipelines.cli.main import app

    refused = CliRunner().invoke(app, ["speed", "run", "--state", "shared"])
    assert refused.exit_code == 2
    assert "--state" in refused.output and "'worker', 'keyed'" in refused.output
    assert "--state" in CliRunner().invoke(app, ["speed", "run", "--help"]).output


def test_keyed_state_on_a_distributed_runner_needs_version_1_retired(tmp_path: Path) -> None:
    """A version-1 event carries protected fields in clear until applied: with keyed state on Flink or
    Dataflow it would cross the shuffle and the state backend, so the configuration is refused."""
    from speed.errors import SpeedError

    with pytest.raises(SpeedError, match=r"speed\.v1_cutover"):
        _config(tmp_path, state="keyed", runner="FlinkRunner")
    assert _config(tmp_path, state="keyed", runner="FlinkRunner", v1_cutover="2026-01-01T00:00:00Z").state == "keyed"
    assert _config(tmp_path, state="keyed", runner="PrismRunner").state == "keyed"  # in this process
    assert _config(tmp_path, state="worker", runner="FlinkRunner").state == "worker"


def test_on_a_distributed_runner_only_the_runners_watermark_releases(tmp_path: Path) -> None:
    """Flink or Dataflow: an event waits in its key until the runner's watermark reaches its timer."""
    roots, parts = _records(3)
    run_id = "keyed-test-remote"
    config = _config(
        tmp_path, order_hold_ms=1_000, state="keyed", runner="FlinkRunner", v1_cutover="2099-01-01T00:00:00Z"
    )
    runtime = Runtime(EventProcessor(config, roots), sinks=None, in_flight=InFlight())  # type: ignore[arg-type]
    register(run_id, runtime)
    register_control(run_id, RunControl())
    try:
        fn = ApplyKeyed(config, lambda: roots, run_id)
        fn.setup()
        ready, _ = runtime.processor.check_batch(parts[0], int(time.time() * 1000))
        vehicle = ready[0].env["vehicle"]
        mine = [ev for ev in ready if ev.env["vehicle"] == vehicle]
        state, timer = _State(), _Timer()
        assert list(fn.process((vehicle, mine), slot=state, wake=timer)) == []  # nothing before the timer
        assert timer.at is not None and len(state.read().held) == len(mine)
        earliest = min(ev.record.timestamp_ms for ev in mine)
        assert timer.at == Timestamp.of((earliest + 1_000) / 1000)
        fired, timer.at = timer.at, None
        out = list(fn.on_release(fired=fired, slot=state, wake=timer))
        released = [r for records, _ in out for r in records]
        # the event the timer was set for goes, with any of the vehicle's held events sorting before it
        assert earliest in {r.timestamp_ms for r in released}
        assert len(released) + len(state.read().held) == len(mine)
    finally:
        unregister(run_id)
