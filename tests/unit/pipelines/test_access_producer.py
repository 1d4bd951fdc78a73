"""An ownership change submitted through the producer SDK removes the previous owner's grants."""

from __future__ import annotations

import pytest

from pipelines.access import AccessDenied, AccessService, ConsumerKeyPair, SqliteGrantStore
from pipelines.producer import MemoryAnchor, MemoryPublisher, Producer
from pipelines.settings import Settings
from pipelines.vault import IdentityVault

VIN = "WVWZZZ1JZXW000001"
ANA = {"name": "Ana Silva", "id_number": "PT-12345678"}
BRUNO = {"name": "Bruno Costa", "id_number": "PT-87654321"}


def sale(event_time: str, new_owner: dict[str, str], km: int) -> dict[str, object]:
    return {
        "event_type": "ownership_change",
        "schema_version": 1,
        "source_id": "garage-net-03",
        "vin": VIN,
        "event_time": event_time,
        "payload": {"odometer_km": km, "new_owner": new_owner, "country": "PT"},
    }


def test_a_sale_through_the_sdk_revokes_the_previous_owners_grants(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, producer={"checkpoint_every": 16, "checkpoint_seconds": 3600})
    vault = IdentityVault(settings)
    grants = SqliteGrantStore(tmp_path / "vault" / "grants.sqlite")
    service = AccessService(vault, grants)
    insurer = ConsumerKeyPair.generate()
    with Producer(
        settings, source_id="garage-net-03", source_kind="garage", anchor=MemoryAnchor(),
        publisher=MemoryPublisher(), vault=vault,
    ) as producer:  # fmt: skip
        producer.submit(sale("2026-01-01T10:00:00.000Z", ANA, 1000))
        vehicle = vault.find_vehicle(VIN)
        assert vehicle is not None
        service.grant_as_owner(insurer.public_key, vehicle, "precise_location", 4_000_000_000)
        before = grants.epoch(vehicle, "precise_location")
        assert service.wrapped_keys(insurer.public_key, vehicle, [("precise_location", before)])
        producer.submit(sale("2026-02-01T10:00:00.000Z", BRUNO, 2000))
    assert grants.grants(vehicle=vehicle) == []
    assert grants.epoch(vehicle, "precise_location") > before
    assert grants.epoch(vehicle, "owner_identity") > 0  # every protected category rotated
    with pytest.raises(AccessDenied, match="no grant"):
        service.wrapped_keys(insurer.public_key, vehicle, [("precise_location", before)])
    vault.close()
    grants.close()
