"""Small parts of the speed layer: stop conditions, the roots cache, the bounded replay index."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("apache_beam")

from speed.errors import LedgerUnavailable
from speed.roots import CachedRoots, InMemoryRoots, SourceInfo
from speed.source import RunControl
from speed.state import SeenEvents, VehicleStates, origin_key


def test_max_events_grants_exactly_the_budget_then_stops() -> None:
    control = RunControl(max_events=10)
    assert control.budget(6) == 6
    assert not control.should_stop()
    assert control.budget(6) == 4
    assert control.should_stop()
    assert control.budget(3) == 0


def test_until_idle_stops_only_after_the_quiet_period() -> None:
    control = RunControl(until_idle_s=0.2)
    control.saw_records()
    assert not control.should_stop()
    time.sleep(0.25)
    assert control.should_stop()


def test_cached_roots_keep_found_roots_and_retry_misses_later() -> None:
    calls: list[tuple[str, int]] = []
    anchored: dict[tuple[str, int], bytes] = {}
    clock = [0.0]

    def read(source_id: str, size: int) -> bytes | None:
        calls.append((source_id, size))
        return anchored.get((source_id, size))

    roots = CachedRoots(read, lambda s: SourceInfo(s, 1, 1.0), negative_ttl_s=1.0, clock=lambda: clock[0])
    assert roots.checkpoint_root("cc-a", 8) is None
    anchored[("cc-a", 8)] = b"\x01" * 32
    assert roots.checkpoint_root("cc-a", 8) is None  # the miss is remembered for a second
    clock[0] = 1.5
    assert roots.checkpoint_root("cc-a", 8) == b"\x01" * 32
    assert roots.checkpoint_root("cc-a", 8) == b"\x01" * 32
    assert calls == [("cc-a", 8), ("cc-a", 8)]
    roots.observe("cc-a", 16, b"\x02" * 32)  # what the ledger indexer feeds
    assert roots.checkpoint_root("cc-a", 16) == b"\x02" * 32
    assert len(calls) == 2


def test_cached_roots_refresh_source_facts_after_their_ttl() -> None:
    clock = [0.0]
    reads: list[str] = []

    def read_source(source_id: str) -> SourceInfo | None:
        reads.append(source_id)
        return None if source_id == "unknown" else SourceInfo(source_id, 1, 1.0)

    roots = CachedRoots(lambda s, n: None, read_source, source_ttl_s=60.0, clock=lambda: clock[0])
    assert roots.source_info("cc-a") == SourceInfo("cc-a", 1, 1.0)
    assert roots.source_info("unknown") is None
    clock[0] = 59.9
    assert roots.source_info("cc-a") is not None and roots.source_info("unknown") is None
    assert reads == ["cc-a", "unknown"]  # an unknown source is remembered too
    clock[0] = 60.0
    roots.source_info("cc-a")
    assert reads == ["cc-a", "unknown", "cc-a"]


def test_in_memory_roots_round_trip_through_a_file(tmp_path) -> None:
    roots = InMemoryRoots()
    roots.add_source("garage-net-03", tier=2, reputation=0.7)
    roots.add_checkpoint("garage-net-03", 42, b"\x05" * 32)
    roots.save(tmp_path / "roots.json")
    again = InMemoryRoots.load(tmp_path / "roots.json")
    assert again.checkpoint_root("garage-net-03", 42) == b"\x05" * 32
    assert again.source_info("garage-net-03") == SourceInfo("garage-net-03", 2, 0.7)
    again.down = True
    with pytest.raises(LedgerUnavailable):
        again.checkpoint_root("garage-net-03", 42)


def _uuid7(ms: int, n: int) -> str:
    h = f"{ms:012x}"
    return f"{h[:8]}-{h[8:]}-7000-8000-{n:012x}"


def test_seen_events_forget_ids_accepted_before_the_window_and_beyond_the_cap() -> None:
    seen = SeenEvents(window_s=60, max_entries=3)
    now = 1_700_000_000_000
    ids = [_uuid7(now - 10**10, i) for i in range(4)]  # events created long ago (a backlog)
    for i, event_id in enumerate(ids):
        seen.add(event_id, origin_key("pcc.telemetry", 0, i), now + i * 30_000)
    assert len(seen) == 3 and seen.origin_of(ids[0]) is None  # the cap dropped the oldest
    assert seen.origin_of(ids[3]) == origin_key("pcc.telemetry", 0, 3)
    assert seen.expire(now + 150_000) == 1  # ids[1] was accepted at +30 s, more than 60 s + a minute ago
    assert seen.origin_of(ids[1]) is None and seen.origin_of(ids[2]) is not None


def test_a_replay_of_an_old_event_is_caught_after_an_expiry() -> None:
    """Backfilled events carry old UUIDv7 times; the window counts from when they were accepted."""
    seen = SeenEvents(window_s=7 * 24 * 3600)
    now = 1_800_000_000_000
    old = _uuid7(now - 2 * 365 * 86_400_000, 1)  # two years old
    seen.add(old, origin_key("pcc.telemetry", 0, 1), now)
    assert seen.expire(now + 60_000) == 0
    assert seen.origin_of(old) == origin_key("pcc.telemetry", 0, 1)


def test_vehicle_state_keys_are_compact_and_distinct() -> None:
    states = VehicleStates()
    states.put("v-" + "ab" * 16, "state-a")
    states.put("v-" + "cd" * 16, "state-b")
    assert states.get("v-" + "ab" * 16) == "state-a"
    assert states.get("v-" + "ef" * 16) is None
    assert len(states) == 2
