"""A grantee's answer: which keys its rows need, the wrapped keys the service keeps, opening rows in one pass."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from pipelines.access import (
    AccessDenied,
    AccessService,
    ConsumerKeyPair,
    GranteeKeys,
    InMemoryGrantStore,
    KeyRing,
    TamperedCiphertext,
    needed_keys,
    open_held,
    open_payload,
    row_aad,
    seal_payload,
)
from pipelines.access.fields import cipher_of
from pipelines.access.wrap import wrap_key
from pipelines.vault import IdentityVault
from pipelines.vin import with_check_digit
from serving.sealed import needed_by_vehicle, open_rows, wrapped_keys_for
from tests.fixtures.access_data import NOW, PAYLOAD, Clock


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[IdentityVault]:
    with IdentityVault(tmp_path / "identity.sqlite") as v:
        yield v


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(vault: IdentityVault, clock: Clock) -> AccessService:
    return AccessService(vault, InMemoryGrantStore(), clock=clock)


def car(vault: IdentityVault, n: int) -> str:
    vehicle = vault.pseudonymize_vehicle(with_check_digit(f"WVWZZZ1JZXW{n:06d}"))
    vault.record_ownership(
        vehicle, vault.pseudonymize_owner({"name": f"Owner {n}", "id_number": f"ID-{n}"}), since_ms=1
    )
    return vehicle


def row(service: AccessService, vehicle: str, event_id: str, payload: dict[str, Any] = PAYLOAD) -> dict:
    """A row of ``vehicle_history`` as the serving layer returns it: the sealed payload as JSON text."""
    sealed = seal_payload(
        "maintenance", 1, payload, service.keys.key_for(vehicle), row_aad(vehicle, event_id)
    )
    return {
        "vehicle": vehicle,
        "event_id": event_id,
        "event_type": "maintenance",
        "schema_version": 1,
        "payload": orjson.dumps(sealed, option=orjson.OPT_SORT_KEYS).decode(),
    }


def test_the_keys_an_answer_needs_are_those_of_its_sealed_fields(
    service: AccessService, vault: IdentityVault
) -> None:
    a, b = car(vault, 1), car(vault, 2)
    rows = [row(service, a, "e1"), row(service, b, "e2")]
    service.keys.rotate(a, "commercial")
    rows.append(row(service, a, "e3", {"odometer_km": 1, "service_type": "inspection", "in_network": False,
                                       "cost_cents": 5000}))  # fmt: skip
    rows.append({**row(service, b, "e4"), "event_id": None})  # cannot be opened: no keys asked for it
    service.keys.rotate(b, "precise_location")
    rows.append(row(service, b, "e5", {**PAYLOAD, "notes": "enc:v1 is how fields are sealed"}))

    expected: dict[str, set[tuple[str, int]]] = {}
    for r in rows:
        if r["event_id"] is not None:
            need = needed_keys("maintenance", 1, orjson.loads(r["payload"]))
            expected.setdefault(r["vehicle"], set()).update(need)
    assert needed_by_vehicle(pa.Table.from_pylist(rows)) == expected
    assert expected[a] == {("commercial", 0), ("precise_location", 0), ("commercial", 1)}
    assert expected[b] == {("commercial", 0), ("precise_location", 0), ("precise_location", 1)}
    assert needed_by_vehicle(pa.Table.from_pylist(rows).drop_columns(["event_id"])) == {}


def test_a_grantee_opens_the_categories_it_holds_and_the_rest_stays_sealed(
    service: AccessService, vault: IdentityVault
) -> None:
    a, b = car(vault, 1), car(vault, 2)
    insurer = ConsumerKeyPair.generate()
    service.grant_as_owner(insurer.public_key, a, "commercial", NOW + 3600)
    service.grant_as_owner(insurer.public_key, a, "precise_location", NOW + 3600)
    service.grant_as_owner(insurer.public_key, b, "commercial", NOW + 3600)
    rows = [row(service, a, "e1"), row(service, b, "e2")]
    table = pa.Table.from_pylist(rows)

    opened = open_rows(table.to_pylist(), insurer, wrapped_keys_for(service, insurer.public_key.hex(), table))
    assert opened[0]["payload"] == PAYLOAD
    sealed_b = orjson.loads(rows[1]["payload"])
    assert opened[1]["payload"] == {**sealed_b, "cost_cents": 18990, "invoice_ref": "INV-2026-0042"}
    assert opened[1]["payload"]["location"].startswith("enc:v1:precise_location:0:")

    stranger = ConsumerKeyPair.generate()
    assert wrapped_keys_for(service, stranger.public_key.hex(), table) == {}
    assert [r["payload"] for r in open_rows(rows, stranger, {})] == [orjson.loads(r["payload"]) for r in rows]


def test_a_category_is_opened_only_when_every_epoch_it_names_is_held(
    service: AccessService, vault: IdentityVault
) -> None:
    a = car(vault, 1)
    r = orjson.loads(row(service, a, "e1")["payload"])
    service.keys.rotate(a, "commercial")
    r2 = orjson.loads(row(service, a, "e2")["payload"])
    mixed = {**r, "invoice_ref": r2["invoice_ref"]}  # commercial at epochs 0 and 1 in one payload
    consumer = ConsumerKeyPair.generate()
    ring = GranteeKeys(consumer, a)
    for category in ("commercial", "precise_location"):
        ring.add(category, 0, wrap_key(service.keys.key(a, category, 0), consumer.public_key, a, category, 0))
    ciphers = ring.ciphers
    opened = open_held("maintenance", 1, mixed, ciphers, row_aad(a, "e1"))
    assert opened["location"] == PAYLOAD["location"]
    assert opened["cost_cents"] == r["cost_cents"] and opened["invoice_ref"] == r2["invoice_ref"]  # sealed
    assert open_held("maintenance", 1, r, ciphers, row_aad(a, "e1")) == open_payload(
        "maintenance", 1, r, ring, row_aad(a, "e1")
    )


def test_opening_refuses_tampered_moved_and_plaintext_fields(
    service: AccessService, vault: IdentityVault
) -> None:
    a = car(vault, 1)
    r = orjson.loads(row(service, a, "e1")["payload"])
    ciphers = {(c, 0): cipher_of(c, 0, service.keys.key(a, c, 0)) for c in ("commercial", "precise_location")}
    token = r["invoice_ref"]
    at = len(token) - 30  # inside the ciphertext and tag, never a padding character's spare bits
    flipped = token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]
    with pytest.raises(TamperedCiphertext, match="invoice_ref"):
        open_held("maintenance", 1, {**r, "invoice_ref": flipped}, ciphers, row_aad(a, "e1"))
    with pytest.raises(TamperedCiphertext, match="does not authenticate"):
        open_held("maintenance", 1, r, ciphers, row_aad(a, "e2"))  # moved to another row
    with pytest.raises(TamperedCiphertext, match="plain value"):
        open_held("maintenance", 1, {**r, "cost_cents": 1}, {}, row_aad(a, "e1"))
    with pytest.raises(TamperedCiphertext, match="labelled"):
        open_held("maintenance", 1, {**r, "location": r["cost_cents"]}, {}, row_aad(a, "e1"))


def test_wrapped_keys_are_reused_but_the_grant_is_checked_on_every_request(
    service: AccessService, vault: IdentityVault, clock: Clock
) -> None:
    a = car(vault, 1)
    insurer = ConsumerKeyPair.generate()
    service.grant_as_owner(insurer.public_key, a, "commercial", NOW + 3600)
    need = {("commercial", 0)}
    first = service.wrapped_keys(insurer.public_key, a, need)
    assert service.wrapped_keys(insurer.public_key, a, need) == first  # no new HPKE wrapping
    other = ConsumerKeyPair.generate()
    service.grant_as_owner(other.public_key, a, "commercial", NOW + 3600)
    assert service.wrapped_keys(other.public_key, a, need) != first  # per consumer key

    service.revoke_as_owner(insurer.public_key, a, "commercial")
    with pytest.raises(AccessDenied, match="holds no grant"):
        service.wrapped_keys(insurer.public_key, a, need)  # cached, yet refused at once

    clock.now = NOW + 3600
    with pytest.raises(AccessDenied, match="expired"):
        service.wrapped_keys(other.public_key, a, need)


def test_the_cache_of_wrapped_keys_expires_is_bounded_and_is_dropped_on_erasure(
    vault: IdentityVault,
) -> None:
    ticks = [0.0]
    ring = KeyRing(vault, InMemoryGrantStore(), wrap_cache_s=10.0, wrap_cache_size=3, clock=lambda: ticks[0])
    cars = [car(vault, n) for n in range(1, 5)]
    insurer = ConsumerKeyPair.generate()

    def wrapped(vehicle: str) -> str:
        return ring.wrapped(insurer.public_key, vehicle, "commercial", 0, ring.key(vehicle, "commercial", 0))

    first = wrapped(cars[0])
    assert wrapped(cars[0]) == first
    ticks[0] = 10.0
    assert wrapped(cars[0]) != first  # expired: wrapped again
    for vehicle in cars:
        wrapped(vehicle)
    assert len(ring._wrapped) == 3 and all(slot[1] != cars[0] for slot in ring._wrapped)
    kept = wrapped(cars[3])
    assert ring.erase_vehicle(cars[3]) >= 1
    assert all(slot[1] != cars[3] for slot in ring._wrapped)
    assert wrapped(cars[3]) != kept
    # a cached wrapping is used only for the key it wrapped (the vault's key of that epoch)
    other_key = bytes(32 - len(b"x")) + b"x"
    token = ring.wrapped(insurer.public_key, cars[1], "commercial", 0, other_key)
    assert token != wrapped(cars[1])
