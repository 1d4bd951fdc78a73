"""The speed layer seals protected fields before any sink: what lands in the rows, what opens it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("apache_beam")

from pipelines import merkle
from pipelines.access import KeyRing, SqliteGrantStore, open_payload, row_aad, verify_opened_row
from pipelines.events import format_time, new_event_id
from pipelines.vault import IdentityVault
from speed.config import SpeedConfig
from speed.process import EventProcessor
from speed.roots import InMemoryRoots
from speed.source import KafkaRecord
from tests.fixtures.synthetic import SyntheticSource, wire

VIN = "WVWZZZ1JZXW000001"
PLACE = {"lat": 48.856613, "lon": 2.352222}


def _config(tmp_path: Path) -> SpeedConfig:
    return SpeedConfig(
        bootstrap="127.0.0.1:1",
        data_dir=tmp_path,
        topics=("pcc.garage",),
        deadletter_topic="pcc.deadletter",
        proof_wait_s=5.0,
    )


def _maintenance(src: SyntheticSource, vehicle: str, event_ms: int) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "event_type": "maintenance",
        "schema_version": 1,
        "source_id": src.source_id,
        "vehicle": vehicle,
        "event_time": format_time(event_ms),
        "ingestion_time": format_time(event_ms + 1000),
        "payload": {
            "odometer_km": 41300,
            "service_type": "oil_change",
            "in_network": True,
            "cost_cents": 18990,
            "invoice_ref": "INV-2026-0042",
            "location": PLACE,
        },
    }


def _run(processor: EventProcessor, envs: list[dict[str, Any]]) -> Any:
    records = [KafkaRecord("pcc.garage", 0, i, 0, None, wire(e)) for i, e in enumerate(envs)]
    return processor.process_batch(records, int(time.time() * 1000))


@pytest.fixture
def keys(tmp_path: Path) -> Any:
    vault = IdentityVault(tmp_path / "vault" / "identity.sqlite")
    grants = SqliteGrantStore(tmp_path / "vault" / "grants.sqlite")
    yield KeyRing(vault, grants)
    vault.close()
    grants.close()


def test_rows_hold_sealed_fields_the_region_and_the_audit_path(tmp_path: Path, keys: KeyRing) -> None:
    roots = InMemoryRoots()
    src = SyntheticSource("garage-net-03", roots)
    vehicle = keys.vault.pseudonymize_vehicle(VIN)
    env = src.append(_maintenance(src, vehicle, int(time.time() * 1000) - 3_600_000))
    (env,) = src.checkpoint()
    result = _run(EventProcessor(_config(tmp_path), roots, keys=keys), [env])
    (row,) = result.rows
    text = orjson.dumps(row).decode()
    for secret in ("48.856613", "2.352222", "18990", "INV-2026-0042"):
        assert secret not in text
    assert (row["lat"], row["lon"]) == (48.9, 2.4)
    assert row["odometer_km"] == 41300  # public fields stay readable
    assert row["proof_path"] == env["proof"]["path"]
    sealed = orjson.loads(row["payload"])
    assert sealed["service_type"] == "oil_change" and sealed["location"].startswith(
        "enc:v1:precise_location:0:"
    )
    opened = open_payload(
        "maintenance", 1, sealed, keys.key_lookup(vehicle), row_aad(vehicle, row["event_id"])
    )
    assert opened == env["payload"]
    path = [bytes.fromhex(h) for h in row["proof_path"]]
    assert verify_opened_row({**row, "event_time": env["event_time"], "ingestion_time": env["ingestion_time"]},
                             opened, path) == bytes.fromhex(row["leaf_hash"])  # fmt: skip
    assert merkle.verify_inclusion(
        bytes.fromhex(row["leaf_hash"]), row["log_index"], row["tree_size"], path, bytes.fromhex(row["root"])
    )


def test_a_revocation_seals_later_events_under_the_next_epoch(tmp_path: Path, keys: KeyRing) -> None:
    roots = InMemoryRoots()
    src = SyntheticSource("garage-net-03", roots)
    vehicle = keys.vault.pseudonymize_vehicle(VIN)
    processor = EventProcessor(_config(tmp_path), roots, keys=keys)
    now = int(time.time() * 1000)
    src.append(_maintenance(src, vehicle, now - 7_200_000))
    (first,) = _run(processor, src.checkpoint()).rows
    keys.rotate(vehicle, "commercial")
    src.append(_maintenance(src, vehicle, now - 3_600_000))
    (second,) = _run(processor, src.checkpoint()).rows
    assert orjson.loads(first["payload"])["cost_cents"].startswith("enc:v1:commercial:0:")
    assert orjson.loads(second["payload"])["cost_cents"].startswith("enc:v1:commercial:1:")
    assert orjson.loads(second["payload"])["location"].startswith("enc:v1:precise_location:0:")


def test_protected_fields_of_a_vehicle_the_vault_does_not_know_are_dead_lettered(
    tmp_path: Path, keys: KeyRing
) -> None:
    roots = InMemoryRoots()
    src = SyntheticSource("garage-net-03", roots)
    stranger = "v-" + "ab" * 16  # erased, or never pseudonymised by this platform's vault
    src.append(_maintenance(src, stranger, int(time.time() * 1000) - 3_600_000))
    result = _run(EventProcessor(_config(tmp_path), roots, keys=keys), src.checkpoint())
    assert result.rows == []
    assert [d.reason for d in result.dead] == ["unknown_vehicle"]
    assert "48.856613" not in result.dead[0].detail


def test_the_processor_opens_the_configured_vault_itself(tmp_path: Path) -> None:
    roots = InMemoryRoots()
    src = SyntheticSource("garage-net-03", roots)
    with IdentityVault(tmp_path / "vault" / "identity.sqlite") as vault:
        vehicle = vault.pseudonymize_vehicle(VIN)
    src.append(_maintenance(src, vehicle, int(time.time() * 1000) - 3_600_000))
    (row,) = _run(EventProcessor(_config(tmp_path), roots), src.checkpoint()).rows
    assert "48.856613" not in row["payload"] and "enc:v1:precise_location" in row["payload"]
