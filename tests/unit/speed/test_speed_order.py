"""The ordering buffer: a vehicle's events read from several partitions meet the rules in event order.

Whatever the batching (which partition a runner polls first, how many records
a poll returns), events held until the watermark passes them are applied in
``sort_key`` order, so the flags do not depend on arrival.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

pytest.importorskip("apache_beam")

from speed.config import SpeedConfig
from speed.errors import SpeedError
from speed.process import EventProcessor
from speed.roots import InMemoryRoots
from speed.source import KafkaRecord, RunControl
from tests.fixtures.synthetic import SyntheticSource, vehicle, wire

DAY = 86_400_000
PARTITIONS = 3


def _config(tmp_path: Path, **kw: object) -> SpeedConfig:
    values: dict[str, object] = dict(
        bootstrap="127.0.0.1:1",
        data_dir=tmp_path,
        topics=("pcc.telemetry",),
        deadletter_topic="pcc.deadletter",
    )
    values.update(kw)
    return SpeedConfig(**values)  # type: ignore[arg-type]


def _records(seed: int) -> tuple[InMemoryRoots, list[list[KafkaRecord]]]:
    """Two vehicles (one rolled back), each reading on a random partition, produced at 1 ms apart."""
    roots = InMemoryRoots()
    src = SyntheticSource("cc-aurora", roots, checkpoint_every=1000)
    start = int(time.time() * 1000) - 30 * DAY
    events = []
    for v in range(2):
        km = 20_000
        for i in range(12):
            km += 50
            if v == 1 and i == 8:
                km -= 5_000
            events.append(src.append(src.odometer(vehicle(v), km, start + (i * 2 + v) * 3_600_000)))
    src.checkpoint()
    rng = random.Random(seed)
    parts: list[list[KafkaRecord]] = [[] for _ in range(PARTITIONS)]
    for n, e in enumerate(rng.sample(events, len(events))):
        p = rng.randrange(PARTITIONS)
        parts[p].append(KafkaRecord("pcc.telemetry", p, len(parts[p]), 1_000 + n, None, wire(e)))
    return roots, parts


def _run(
    tmp_path: Path, roots: InMemoryRoots, parts: list[list[KafkaRecord]], seed: int, hold_ms: int
) -> dict[str, list[str]]:
    """Poll the partitions in a random order and poll sizes, with the watermark the source reports."""
    proc = EventProcessor(_config(tmp_path, order_hold_ms=hold_ms), roots)
    control = RunControl()
    control.expect(("pcc.telemetry", p) for p in range(PARTITIONS))
    rng = random.Random(seed * 7 + 1)
    cursor = [0] * PARTITIONS
    rows: dict[str, list[str]] = {}
    now = int(time.time() * 1000)
    while any(cursor[p] < len(parts[p]) for p in range(PARTITIONS)) or proc.held:
        p = rng.randrange(PARTITIONS)
        batch = parts[p][cursor[p] : cursor[p] + rng.randint(1, 4)]
        cursor[p] += len(batch)
        result = proc.process_batch(batch, now, control.watermark_ms())
        # after the batch is processed the source reports how far the partition was read
        control.advanced(("pcc.telemetry", p), batch[-1].timestamp_ms if batch else 1_000_000)
        rows.update({r["event_id"]: r["flags"] for r in result.rows})
        assert proc.pending_floor().keys() <= {("pcc.telemetry", q) for q in range(PARTITIONS)}
    return rows


def flags_applied_at_once(tmp_path: Path, roots: InMemoryRoots, parts: list[list[KafkaRecord]]) -> dict[str, list[str]]:
    """Each event's flags when every record is applied at once, in the rules' order (the reference)."""
    now = int(time.time() * 1000)
    once = EventProcessor(_config(tmp_path), roots).process_batch([r for p in parts for r in p], now)
    want = {r["event_id"]: r["flags"] for r in once.rows}
    assert any(want.values())  # the rollback is flagged
    return want


def test_held_events_give_the_same_flags_whatever_the_polling_order(tmp_path: Path) -> None:
    # a hold longer than the whole produce span: the answer is the one of applying all at once
    roots, parts = _records(5)
    want = flags_applied_at_once(tmp_path, roots, parts)
    for order_seed in range(4):
        assert _run(tmp_path, roots, parts, order_seed, hold_ms=1_000) == want


def test_without_a_watermark_everything_decided_is_applied(tmp_path: Path) -> None:
    roots, parts = _records(3)
    proc = EventProcessor(_config(tmp_path, order_hold_ms=1_000), roots)
    result = proc.process_batch(parts[0], int(time.time() * 1000), -1)
    assert result.rows == [] and proc.held == len(parts[0])
    assert proc.pending_floor() == {("pcc.telemetry", 0): 0}  # the sinks commit nothing past a held event
    result = proc.process_batch([], int(time.time() * 1000), None)
    assert len(result.rows) == len(parts[0]) and proc.held == 0
    assert proc.pending_floor() == {}


def test_a_released_event_takes_its_vehicles_earlier_events_with_it(tmp_path: Path) -> None:
    roots, parts = _records(9)
    proc = EventProcessor(_config(tmp_path, order_hold_ms=0), roots)
    records = sorted((r for p in parts for r in p), key=lambda r: r.timestamp_ms)
    proc.process_batch(records, int(time.time() * 1000), -1)
    due = records[: len(records) // 2]
    latest: dict[str, str] = {}  # per vehicle, the latest event time among the due records
    for r in due:
        env = orjson.loads(r.value)
        latest[env["vehicle"]] = max(latest.get(env["vehicle"], ""), env["event_time"])
    want = sorted(
        orjson.loads(r.value)["event_id"]
        for r in records
        if orjson.loads(r.value)["event_time"] <= latest.get(orjson.loads(r.value)["vehicle"], "")
    )
    released = proc.process_batch([], int(time.time() * 1000), due[-1].timestamp_ms).rows
    assert sorted(r["event_id"] for r in released) == want
    assert len(want) > len(due)  # produced later, but earlier in the vehicle's history
    for car in latest:
        times = [r["event_time"] for r in released if r["vehicle"] == car]
        assert times == sorted(times)
    assert proc.held == len(records) - len(want)


def test_the_watermark_waits_for_every_expected_partition() -> None:
    control = RunControl()
    control.expect([("t", 0), ("t", 1)])
    assert control.watermark_ms() == -1
    control.advanced(("t", 0), 50)
    assert control.watermark_ms() == -1
    control.advanced(("t", 1), 70)
    assert control.watermark_ms() == 50
    control.advanced(("t", 0), 40)  # never goes back
    assert control.watermark_ms() == 50


def test_a_negative_hold_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpeedError, match="order_hold_ms"):
        _config(tmp_path, order_hold_ms=-1)
