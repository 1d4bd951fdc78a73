"""The speed layer on version 2 events: it verifies, scores and stores without a protected value in clear."""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("apache_beam")

from pipelines.access import open_held, row_aad, seal_event
from pipelines.access.fields import cipher_of
from pipelines.events import PROTECTED_CATEGORIES, format_time, new_event_id
from speed.process import EventProcessor
from speed.roots import InMemoryRoots
from speed.rules import RulesAdapter
from tests.fixtures.synthetic import SyntheticSource, vehicle, wire
from tests.unit.speed.test_speed_process import Feed, _config

DAY = 86_400_000
PARIS = {"lat": 48.856613, "lon": 2.352222}
KEYS = {c: os.urandom(32) for c in PROTECTED_CATEGORIES}
#: every protected value the events below carry, as it would appear in JSON text
SECRETS = [b"48.856613", b"2.352222", b"18990", b"INV-2026-0042", b"1450000", b'"PT"', b"o-" + b"1" * 32]


class NoKeys:
    """A key ring the speed layer may not use: version 2 needs no key, so it sees nothing in clear."""

    def key_for(self, vehicle: str) -> Any:
        return lambda category: self.current(vehicle, category)

    def current(self, vehicle: str, category: str) -> Any:
        raise AssertionError("the speed layer asked for a data key")


class RecordingRules(RulesAdapter):
    """The real rules, remembering everything they were given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bytes] = []

    def fraud(self, state: Any, env: Any, event_ms: int, verified: bool) -> Any:
        self.seen.append(orjson.dumps(env))
        return super().fraud(state, env, event_ms, verified)

    def quality(self, env: Any, *args: Any) -> Any:
        self.seen.append(orjson.dumps(env))
        return super().quality(env, *args)


def clear(event_type: str, payload: dict[str, Any], t: int, n: int = 0) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "event_type": event_type,
        "schema_version": 1,
        "source_id": "garage-net-03",
        "vehicle": vehicle(n),
        "event_time": format_time(t),
        "ingestion_time": format_time(t + 1000),
        "payload": payload,
    }


def service(t: int) -> dict[str, Any]:
    payload = {"odometer_km": 41_300, "service_type": "oil_change", "in_network": True,
               "cost_cents": 18_990, "invoice_ref": "INV-2026-0042", "location": PARIS}  # fmt: skip
    return clear("maintenance", payload, t)


def sale(t: int) -> dict[str, Any]:
    payload = {
        "odometer_km": 41_500,
        "new_owner": "o-" + "1" * 32,
        "sale_price_cents": 1_450_000,
        "country": "PT",
    }
    return clear("ownership_change", payload, t)


def sealed(env: dict[str, Any]) -> dict[str, Any]:
    return seal_event(env, lambda category: (0, KEYS[category]))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[EventProcessor, SyntheticSource, RecordingRules, Feed]:
    roots = InMemoryRoots()
    src = SyntheticSource("garage-net-03", roots, checkpoint_every=1000)
    rules = RecordingRules()
    proc = EventProcessor(_config(tmp_path), roots, rules=rules, keys=NoKeys())  # type: ignore[arg-type]
    return proc, src, rules, Feed()


def now() -> int:
    return int(time.time() * 1000)


def test_version_2_events_are_verified_scored_and_stored_without_a_key_or_a_clear_value(setup) -> None:
    proc, src, rules, feed = setup
    start = now() - 10 * DAY
    for env in (sealed(service(start)), sealed(sale(start + DAY))):
        src.append(env)
    records = [feed.record(wire(e)) for e in src.checkpoint()]
    for record in records:  # what Kafka carries
        assert not [s for s in SECRETS if s in record.value]
    result = proc.process_batch(records, now())
    assert result.dead == [] and len(result.rows) == 2
    stored = orjson.dumps(result.rows)
    assert not [s for s in SECRETS if s in stored]
    assert not [s for s in SECRETS if any(s in seen for seen in rules.seen)]  # the rules: public fields only
    service_row = result.rows[0]
    assert service_row["verification"] == "verified" and (service_row["lat"], service_row["lon"]) == (
        48.9,
        2.4,
    )
    # a grantee opens what the speed layer stored, and it is what the producer sealed
    ciphers = {(c, 0): cipher_of(c, 0, k) for c, k in KEYS.items()}
    aad = row_aad(service_row["vehicle"], service_row["event_id"])
    opened = open_held("maintenance", 2, orjson.loads(service_row["payload"]), ciphers, aad)
    assert opened["location"] == PARIS and opened["cost_cents"] == 18_990


def test_impossible_travel_still_flagged_from_the_public_region(setup) -> None:
    proc, src, _rules, feed = setup
    start = now() - 2 * DAY
    here = clear("odometer_reading", {"odometer_km": 1000, "location": PARIS}, start)
    there = clear("odometer_reading", {"odometer_km": 1010, "location": {"lat": 41.157944, "lon": -8.629105}},
                  start + 600_000)  # fmt: skip
    for env in (sealed(here), sealed(there)):
        src.append(env)
    result = proc.process_batch([feed.record(wire(e)) for e in src.checkpoint()], now())
    assert "impossible_travel" in result.rows[1]["flags"]


def test_a_clear_protected_field_is_bad_schema_naming_the_path_and_the_dead_letter_hides_it(setup) -> None:
    proc, src, _rules, feed = setup
    env = sealed(service(now() - DAY))
    env["payload"]["cost_cents"] = 18_990  # a producer that did not seal
    src.append(env)
    result = proc.process_batch([feed.record(wire(e)) for e in src.checkpoint()], now())
    (dead,) = result.dead
    assert (
        dead.reason == "bad_schema" and "$.payload.cost_cents" in dead.detail and "18990" not in dead.detail
    )
    assert dead.value is not None
    letter = orjson.loads(dead.value)
    assert letter["payload"]["cost_cents"] == "redacted"
    # no value of the letter is the clear cost (its ids and hashes are hex: they may hold the digits)
    assert not [
        v
        for v in _leaves(letter)
        if v == 18_990 or (isinstance(v, str) and not _HEX.match(v) and "18990" in v)
    ]


_HEX = re.compile(r"^[0-9a-fA-F-]{16,}$")  # an id or a hash, not a short number


def _leaves(value: object) -> list[object]:
    """Every scalar of a JSON document."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


def test_a_version_1_event_after_the_cutover_is_refused_with_a_reason(tmp_path: Path) -> None:
    roots = InMemoryRoots()
    src = SyntheticSource("garage-net-03", roots, checkpoint_every=1000)
    cutover = now() - 5 * DAY
    config = _config(tmp_path, v1_cutover=datetime.fromtimestamp(cutover / 1000, UTC))
    proc = EventProcessor(config, roots, keys=NoKeys())  # type: ignore[arg-type]
    before = clear("odometer_reading", {"odometer_km": 1000}, cutover - DAY)
    after = clear("odometer_reading", {"odometer_km": 1000, "location": PARIS}, cutover + DAY)
    v2 = sealed(clear("odometer_reading", {"odometer_km": 1010, "location": PARIS}, cutover + 2 * DAY))
    for env in (before, after, v2):
        src.append(env)
    feed = Feed()
    result = proc.process_batch([feed.record(wire(e)) for e in src.checkpoint()], now())
    assert [r["event_id"] for r in result.rows] == [before["event_id"], v2["event_id"]]
    (dead,) = result.dead
    assert dead.reason == "retired_version" and "speed.v1_cutover" in dead.detail
    assert dead.value is not None and b"48.856613" not in dead.value  # its clear location is not kept


def test_a_region_on_a_whole_degree_travels_as_an_integer_and_is_accepted(setup) -> None:
    """Strict parsing refuses ``10.0`` on the wire: the rounded region must be written ``10``."""
    proc, src, _rules, feed = setup
    env = sealed(
        clear(
            "odometer_reading", {"odometer_km": 1000, "location": {"lat": 45.01, "lon": -0.04}}, now() - DAY
        )
    )
    assert env["payload"]["region"] == {"lat": 45, "lon": 0}
    src.append(env)
    result = proc.process_batch([feed.record(wire(e)) for e in src.checkpoint()], now())
    assert result.dead == [] and (result.rows[0]["lat"], result.rows[0]["lon"]) == (45, 0)
