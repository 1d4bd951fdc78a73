"""The per-event logic of the speed layer: what gets accepted, flagged, or dead-lettered and why."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import orjson
import pytest

pytest.importorskip("apache_beam")

from speed.config import SpeedConfig
from speed.process import EventProcessor
from speed.roots import InMemoryRoots
from speed.source import KafkaRecord
from tests.fixtures.synthetic import SyntheticSource, vehicle, wire

DAY = 86_400_000


def _config(tmp_path: Path, **kw: object) -> SpeedConfig:
    values: dict[str, object] = dict(
        bootstrap="127.0.0.1:1",
        data_dir=tmp_path,
        topics=("pcc.telemetry",),
        deadletter_topic="pcc.deadletter",
        proof_wait_s=5.0,
    )
    values.update(kw)
    return SpeedConfig(**values)  # type: ignore[arg-type]


class Feed:
    def __init__(self) -> None:
        self.offset = 0

    def record(self, value: bytes, topic: str = "pcc.telemetry", partition: int = 0) -> KafkaRecord:
        self.offset += 1
        return KafkaRecord(topic, partition, self.offset, 0, None, value)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[EventProcessor, SyntheticSource, InMemoryRoots, Feed]:
    roots = InMemoryRoots()
    src = SyntheticSource("cc-aurora", roots, checkpoint_every=1000)
    return EventProcessor(_config(tmp_path), roots), src, roots, Feed()


def _now() -> int:
    return int(time.time() * 1000)


def _honest(src: SyntheticSource, n: int, start_ms: int) -> list[dict[str, object]]:
    for i in range(n):
        src.append(src.odometer(vehicle(i % 3), 10_000 + i * 10, start_ms + i * 3_600_000))
    return src.checkpoint()


def test_honest_events_are_verified_scored_and_unflagged(setup) -> None:
    proc, src, _roots, feed = setup
    start = _now() - 30 * DAY
    batch = _honest(src, 9, start)
    result = proc.process_batch([feed.record(wire(e)) for e in batch], _now())
    assert [r["event_id"] for r in result.rows] == [e["event_id"] for e in batch]
    assert result.dead == []
    for row in result.rows:
        assert row["verification"] == "verified"
        assert row["flags"] == []
        assert 0.0 <= row["quality"] <= 1.0
        assert row["q_proof"] == 1.0
        assert row["odometer_km"] >= 10_000


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda raw: raw.replace(b'"odometer_km":', b'"odometer_km":9', 1), "bad_hash"),
        (lambda raw: raw[:-5], "unparseable"),
        (lambda raw: raw.replace(b'"schema_version":1', b'"schema_version":"1"'), "bad_schema"),
    ],
    ids=["one-byte-changed", "truncated", "wrong-type"],
)
def test_bad_bytes_are_dead_lettered_with_their_reason(setup, tamper, reason) -> None:
    proc, src, _roots, feed = setup
    env = _honest(src, 1, _now() - DAY)[0]
    raw = tamper(wire(env))
    result = proc.process_batch([feed.record(raw)], _now())
    assert result.rows == []
    assert [(d.reason, d.record.value) for d in result.dead] == [(reason, raw)]


def test_proof_for_another_checkpoint_is_bad_proof(setup) -> None:
    proc, src, _roots, feed = setup
    first = _honest(src, 4, _now() - 2 * DAY)
    second = _honest(src, 4, _now() - DAY)
    forged = copy.deepcopy(second[0])
    forged["proof"]["root"] = first[0]["proof"]["root"]  # a root that exists, for another tree size
    result = proc.process_batch([feed.record(wire(forged))], _now())
    assert [d.reason for d in result.dead] == ["bad_proof"]


def test_root_not_anchored_by_the_source_is_bad_proof(setup) -> None:
    proc, src, roots, feed = setup
    env = _honest(src, 2, _now() - DAY)[0]
    roots.add_checkpoint("cc-aurora", env["proof"]["tree_size"], b"\x11" * 32)  # ledger says otherwise
    result = proc.process_batch([feed.record(wire(env))], _now())
    assert [d.reason for d in result.dead] == ["bad_proof"]


def test_unknown_source_and_future_timestamp(setup) -> None:
    proc, _src, roots, feed = setup
    rogue = SyntheticSource("garage-rogue", None)
    env = rogue.append(rogue.odometer(vehicle(1), 5, _now() - DAY))
    rogue.checkpoint()
    future_src = SyntheticSource("cc-future", roots)
    ahead = _now() + 2 * 3600_000
    fut = future_src.append(future_src.odometer(vehicle(2), 5, ahead, ingestion_ms=ahead))
    future_src.checkpoint()
    result = proc.process_batch([feed.record(wire(env)), feed.record(wire(fut))], _now())
    assert sorted(d.reason for d in result.dead) == ["future_timestamp", "unknown_source"]


def test_replayed_event_id_is_dead_lettered_but_a_redelivery_is_skipped(setup) -> None:
    proc, src, _roots, feed = setup
    env = _honest(src, 1, _now() - DAY)[0]
    first = feed.record(wire(env))
    assert len(proc.process_batch([first], _now()).rows) == 1
    redelivered = proc.process_batch([first], _now())  # same record read again after a restart
    assert (redelivered.rows, redelivered.dead, redelivered.redelivered) == ([], [], 1)
    replay = proc.process_batch([feed.record(wire(env))], _now())  # same event, another record
    assert [d.reason for d in replay.dead] == ["duplicate_event"]


def test_unanchored_checkpoint_waits_then_is_accepted_unverified(setup) -> None:
    proc, src, _roots, feed = setup
    src.append(src.odometer(vehicle(1), 100, _now() - DAY))
    env = src.checkpoint(anchor=False)[0]
    t0 = _now()
    waiting = proc.process_batch([feed.record(wire(env))], t0)
    assert (waiting.rows, waiting.dead, proc.pending) == ([], [], 1)
    assert proc.pending_floor() == {("pcc.telemetry", 0): 1}
    later = proc.process_batch([], t0 + 5_001)
    assert [r["verification"] for r in later.rows] == ["unverified"]
    assert later.rows[0]["q_proof"] == 0.0
    assert proc.pending == 0


def test_checkpoint_anchored_while_waiting_verifies(setup) -> None:
    proc, src, roots, feed = setup
    src.append(src.odometer(vehicle(1), 100, _now() - DAY))
    env = src.checkpoint(anchor=False)[0]
    proc.process_batch([feed.record(wire(env))], _now())
    roots.add_checkpoint("cc-aurora", env["proof"]["tree_size"], bytes.fromhex(env["proof"]["root"]))
    assert [r["verification"] for r in proc.process_batch([], _now()).rows] == ["verified"]


def test_ledger_down_events_wait_and_are_never_dead_lettered(setup) -> None:
    proc, src, roots, feed = setup
    env = _honest(src, 1, _now() - DAY)[0]
    roots.down = True
    t0 = _now()
    for dt in (0, 60_000, 600_000):  # far beyond proof_wait_s
        result = proc.process_batch([feed.record(wire(env))] if dt == 0 else [], t0 + dt)
        assert (result.rows, result.dead) == ([], [])
    roots.down = False
    assert [r["verification"] for r in proc.process_batch([], t0 + 600_001).rows] == ["verified"]


def test_rollback_flagged_whatever_the_arrival_order_within_a_batch(setup) -> None:
    proc, src, _roots, feed = setup
    t = _now() - 10 * DAY
    v = vehicle(42)
    events = [
        src.append(src.odometer(v, 50_000, t)),
        src.append(src.odometer(v, 50_400, t + DAY)),
        src.append(src.odometer(v, 20_000, t + 2 * DAY)),  # wound back
    ]
    src.checkpoint()
    shuffled = [events[2], events[0], events[1]]
    result = proc.process_batch([feed.record(wire(e)) for e in shuffled], _now())
    flags = {r["odometer_km"]: r["flags"] for r in result.rows}
    assert flags == {50_000: [], 50_400: [], 20_000: ["odometer_rollback"]}
    rollback = next(r for r in result.rows if r["odometer_km"] == 20_000)
    assert rollback["q_consistency"] < 1.0


def test_state_restored_from_rows_keeps_flagging(setup, tmp_path: Path) -> None:
    proc, src, roots, feed = setup
    t = _now() - 10 * DAY
    v = vehicle(7)
    first = [src.append(src.odometer(v, 80_000, t))]
    src.checkpoint()
    rows = proc.process_batch([feed.record(wire(e)) for e in first], _now()).rows
    fresh = EventProcessor(_config(tmp_path), roots)
    assert fresh.restore(rows) == 1
    low = src.append(src.odometer(v, 1_000, t + DAY))
    src.checkpoint()
    result = fresh.process_batch([feed.record(wire(low))], _now())
    assert result.rows[0]["flags"] == ["odometer_rollback"]
    again = fresh.process_batch([KafkaRecord("pcc.telemetry", 0, 1, 0, None, wire(first[0]))], _now())
    assert again.redelivered == 1


def test_dead_letter_keeps_event_id_when_readable(setup) -> None:
    proc, src, _roots, feed = setup
    env = _honest(src, 1, _now() - DAY)[0]
    env["payload"]["odometer_km"] += 1
    result = proc.process_batch([feed.record(orjson.dumps(env))], _now())
    assert [(d.reason, d.event_id) for d in result.dead] == [("bad_hash", env["event_id"])]
