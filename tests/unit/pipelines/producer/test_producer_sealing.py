"""Sealing at the source: nothing protected leaves the producer's process in clear (contract version 2)."""

from __future__ import annotations

import orjson
import pytest

from pipelines.access import AccessService, open_grant_store, open_payload, row_aad, stored_payload
from pipelines.canonical import leaf_hash
from pipelines.errors import PccValidationError
from pipelines.events import validate_envelope
from pipelines.producer import MemoryAnchor, MemoryPublisher, Producer
from pipelines.settings import Settings
from pipelines.vault import IdentityVault
from tests.unit.pipelines.producer.test_producer import SOURCE, vin

ANA = {"name": "Ana Marques Silva", "id_number": "PT-12345678"}
SECRETS = [b"48.856613", b"2.352222", b"18990", b"INV-2026-0042", b"1450000", b"Ana Marques", b"PT-1234"]


def service(i: int = 0) -> dict:
    return {
        "event_type": "maintenance", "schema_version": 1, "source_id": SOURCE, "vin": vin(i),
        "event_time": "2026-01-01T00:00:00.000Z",
        "payload": {"odometer_km": 41_300, "service_type": "oil_change", "in_network": True, "cost_cents": 18_990,
                    "invoice_ref": "INV-2026-0042", "location": {"lat": 48.856613, "lon": 2.352222}},
    }  # fmt: skip


def sale(i: int = 0) -> dict:
    return {
        "event_type": "ownership_change", "schema_version": 2, "source_id": SOURCE, "vin": vin(i),
        "event_time": "2026-01-02T00:00:00.000Z",
        "payload": {"odometer_km": 41_500, "new_owner": ANA, "sale_price_cents": 1_450_000, "country": "PT"},
    }  # fmt: skip


def run(settings: Settings, *events: dict) -> tuple[MemoryPublisher, IdentityVault]:
    pub = MemoryPublisher()
    vault = IdentityVault(settings)
    producer = Producer(settings, source_id=SOURCE, source_kind="garage", anchor=MemoryAnchor(),
                        publisher=pub, vault=vault)  # fmt: skip
    for event in events:
        producer.submit(event)
    producer.flush()  # the spool is read while the producer is open, then after close
    spool = (settings.data_dir / "producers" / SOURCE / "spool.jsonl").read_bytes()
    producer.close()
    assert not [s for s in SECRETS if s in spool]
    return pub, vault


def test_kafka_values_spool_and_log_carry_commitments_and_sealed_values_only(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, producer={"checkpoint_every": 1, "checkpoint_seconds": 3600})
    pub, vault = run(settings, service(), sale())
    for event in pub.sent:
        assert not [s for s in SECRETS if s in event.value], event.value
    everything = b"".join(p.read_bytes() for p in (tmp_path / "producers").rglob("*") if p.is_file())
    assert not [s for s in SECRETS if s in everything]
    first, second = (orjson.loads(e.value) for e in pub.sent)
    assert first["schema_version"] == second["schema_version"] == 2
    assert validate_envelope(first) == [] and validate_envelope(second) == []
    assert first["proof"]["leaf"] == leaf_hash(first).hex()  # over the public fields and commitments
    assert first["payload"]["region"] == {"lat": 48.9, "lon": 2.4}
    # the platform (the vault's keys) opens what the producer sealed
    keys = AccessService(vault, open_grant_store(settings)).keys
    aad = row_aad(first["vehicle"], first["event_id"])
    opened = open_payload("maintenance", 2, stored_payload(first), keys.key_lookup(first["vehicle"]), aad)
    assert opened["cost_cents"] == 18_990 and opened["location"] == {"lat": 48.856613, "lon": 2.352222}
    vault.close()


def test_a_sale_is_sealed_under_the_epoch_started_by_the_sale(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, producer={"checkpoint_every": 1, "checkpoint_seconds": 3600})
    pub, vault = run(settings, service(), sale())
    first, second = (orjson.loads(e.value) for e in pub.sent)
    assert first["sealed"]["cost_cents"].startswith("enc:v2:commercial:0:")
    assert second["sealed"]["new_owner"].startswith(
        "enc:v2:owner_identity:1:"
    )  # the previous owner's grantees
    vault.close()


def test_contract_version_1_still_produces_the_clear_envelope(tmp_path) -> None:
    settings = Settings(
        data_dir=tmp_path, producer={"checkpoint_every": 1, "checkpoint_seconds": 3600, "contract_version": 1}
    )
    pub = MemoryPublisher()
    with IdentityVault(settings) as vault, Producer(settings, source_id=SOURCE, source_kind="garage",
                                                    anchor=MemoryAnchor(), publisher=pub, vault=vault) as producer:  # fmt: skip
        producer.submit(service())
    (event,) = (orjson.loads(e.value) for e in pub.sent)
    assert event["schema_version"] == 1 and event["payload"]["cost_cents"] == 18_990 and "sealed" not in event


def test_rejections_name_the_path_of_a_protected_field_not_its_value(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    bad = service()
    bad["payload"]["location"] = {"lat": 148.856613, "lon": 2.352222}
    vault = IdentityVault(settings)
    producer = Producer(settings, source_id=SOURCE, source_kind="garage", anchor=MemoryAnchor(),
                        publisher=MemoryPublisher(), vault=vault)  # fmt: skip
    with pytest.raises(PccValidationError) as info:
        producer.submit(bad)
    producer.close()
    vault.close()
    text = str(info.value) + " ".join(info.value.problems)
    assert "$.payload.location.lat" in text and "148.85" not in text
