"""Sealing protected fields: what a view holds is unreadable without the key, and opens to exactly what was hashed."""

from __future__ import annotations

import base64
import os
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines import merkle
from pipelines.access import (
    AccessDenied,
    TamperedCiphertext,
    needed_keys,
    open_payload,
    row_aad,
    seal_payload,
    sealed_fields,
    token_info,
    verify_opened_row,
    verify_row_inclusion,
)
from pipelines.canonical import leaf_hash
from pipelines.events import (
    EVENT_TYPES,
    PROTECTED_CATEGORIES,
    field_categories,
    new_event_id,
    validate_payload,
)

VEHICLE = "v-3f9a0c4d2b1e8f7a6c5d4e3f2a1b0c9d"
OWNER = "o-0123456789abcdef0123456789abcdef"
LOCATION = {"lat": 48.856613, "lon": 2.352222}

#: A valid payload of each event type with every optional protected field filled in.
PAYLOADS: dict[str, dict[str, Any]] = {
    "odometer_reading": {"odometer_km": 41235, "location": LOCATION, "fuel_level_pct": 40},
    "maintenance": {
        "odometer_km": 41300,
        "service_type": "oil_change",
        "in_network": True,
        "items": ["oil", "filter"],
        "cost_cents": 18990,
        "invoice_ref": "INV-2026-0042",
        "location": LOCATION,
    },
    "inspection": {"odometer_km": 41400, "result": "pass", "location": LOCATION},
    "accident_declaration": {
        "severity": "minor",
        "claim_ref": "CLM-77-1234",
        "damage_cents": 250000,
        "location": LOCATION,
    },
    "wreck_declaration": {
        "claim_ref": "CLM-88-1",
        "reason": "flood",
        "total_loss": True,
        "location": LOCATION,
    },
    "repair": {"repair_type": "bodywork", "related_claim_ref": "CLM-77-1234", "cost_cents": 99000},
    "ownership_change": {
        "odometer_km": 42000,
        "new_owner": OWNER,
        "previous_owner": "o-fedcba9876543210fedcba9876543210",
        "sale_price_cents": 1_450_000,
        "country": "FR",
    },
}

KEYS = {(c, e): os.urandom(32) for c in PROTECTED_CATEGORIES for e in range(3)}


def key_for(epoch: int = 0):
    return lambda category: (epoch, KEYS[(category, epoch)])


def lookup(category: str, epoch: int) -> bytes:
    return KEYS[(category, epoch)]


def envelope(event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "event_type": event_type,
        "schema_version": 1,
        "source_id": "garage-net-03",
        "vehicle": VEHICLE,
        "event_time": "2026-03-01T08:15:00.000Z",
        "ingestion_time": "2026-03-01T08:15:02.120Z",
        "payload": payload,
    }


def test_the_sample_payloads_are_valid() -> None:
    for event_type, payload in PAYLOADS.items():
        assert validate_payload(event_type, 1, payload) == [], event_type


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_protected_fields_are_sealed_and_public_ones_left_alone(event_type: str) -> None:
    payload = PAYLOADS[event_type]
    sealed = seal_payload(event_type, 1, payload, key_for(), row_aad(VEHICLE, "e1"))
    categories = field_categories(event_type, 1)
    for name, value in payload.items():
        category = categories[f"$.payload.{name}"]
        if category in PROTECTED_CATEGORIES:
            assert token_info(sealed[name]) == (category, 0)
            assert orjson.dumps({name: value})[1:-1] not in orjson.dumps(sealed)
        else:
            assert sealed[name] == value
    assert open_payload(event_type, 1, sealed, lookup, row_aad(VEHICLE, "e1")) == payload


def test_every_schema_with_a_protected_category_has_a_sealed_field() -> None:
    for event_type in EVENT_TYPES:
        protected = {c for c in field_categories(event_type, 1).values() if c in PROTECTED_CATEGORIES}
        assert {f.category for f in sealed_fields(event_type, 1)} == protected


def test_sealing_does_not_touch_the_input_and_is_fresh_each_time() -> None:
    payload = orjson.loads(orjson.dumps(PAYLOADS["maintenance"]))
    a = seal_payload("maintenance", 1, payload, key_for(), b"row")
    b = seal_payload("maintenance", 1, payload, key_for(), b"row")
    assert payload == PAYLOADS["maintenance"]
    assert a["cost_cents"] != b["cost_cents"]  # random nonces


def test_a_missing_key_opens_nothing() -> None:
    sealed = seal_payload("maintenance", 1, PAYLOADS["maintenance"], key_for(), b"row")

    def no_location(category: str, epoch: int) -> bytes:
        if category == "precise_location":
            raise AccessDenied("no grant of precise_location")
        return lookup(category, epoch)

    with pytest.raises(AccessDenied, match="precise_location"):
        open_payload("maintenance", 1, sealed, no_location, b"row")
    partial = open_payload("maintenance", 1, sealed, no_location, b"row", categories={"commercial"})
    assert partial["cost_cents"] == 18990 and partial["location"] == sealed["location"]


def test_a_key_of_the_wrong_size_is_refused() -> None:
    sealed = seal_payload("repair", 1, PAYLOADS["repair"], key_for(), b"row")
    with pytest.raises(AccessDenied, match="no usable key"):
        open_payload("repair", 1, sealed, lambda c, e: b"short", b"row")


def test_a_tampered_ciphertext_is_refused() -> None:
    sealed = seal_payload("maintenance", 1, PAYLOADS["maintenance"], key_for(), b"row")
    token = sealed["cost_cents"]
    flipped = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    with pytest.raises(TamperedCiphertext, match=r"\$\.payload\.cost_cents"):
        open_payload("maintenance", 1, {**sealed, "cost_cents": flipped}, lookup, b"row")


def test_a_token_moved_to_another_row_or_field_or_relabelled_is_refused() -> None:
    row1 = seal_payload("maintenance", 1, PAYLOADS["maintenance"], key_for(), row_aad(VEHICLE, "e1"))
    row2 = seal_payload("maintenance", 1, PAYLOADS["maintenance"], key_for(), row_aad(VEHICLE, "e2"))
    swapped_rows = {**row2, "cost_cents": row1["cost_cents"]}
    with pytest.raises(TamperedCiphertext):
        open_payload("maintenance", 1, swapped_rows, lookup, row_aad(VEHICLE, "e2"))
    swapped_fields = {**row1, "invoice_ref": row1["cost_cents"]}  # same category, another field
    with pytest.raises(TamperedCiphertext, match="invoice_ref"):
        open_payload("maintenance", 1, swapped_fields, lookup, row_aad(VEHICLE, "e1"))
    relabelled = {**row1, "cost_cents": row1["cost_cents"].replace(":0:", ":1:", 1)}
    with pytest.raises(TamperedCiphertext):
        open_payload("maintenance", 1, relabelled, lookup, row_aad(VEHICLE, "e1"))
    recategorised = {**row1, "location": row1["location"].replace("precise_location", "commercial", 1)}
    with pytest.raises(TamperedCiphertext, match="schema says 'precise_location'"):
        open_payload("maintenance", 1, recategorised, lookup, row_aad(VEHICLE, "e1"))


def test_a_plain_value_where_a_sealed_one_belongs_is_refused() -> None:
    sealed = seal_payload("odometer_reading", 1, PAYLOADS["odometer_reading"], key_for(), b"row")
    with pytest.raises(TamperedCiphertext, match="plain value"):
        open_payload("odometer_reading", 1, {**sealed, "location": LOCATION}, lookup, b"row")
    with pytest.raises(TamperedCiphertext, match="not an enc:v1 or enc:v2 token"):
        open_payload("odometer_reading", 1, {**sealed, "location": "enc:v1:garbage"}, lookup, b"row")


def test_needed_keys_names_category_and_epoch() -> None:
    sealed = seal_payload("maintenance", 1, PAYLOADS["maintenance"], key_for(2), b"row")
    assert needed_keys("maintenance", 1, sealed) == {("commercial", 2), ("precise_location", 2)}
    assert needed_keys("maintenance", 1, {"odometer_km": 1}) == set()


def test_an_opened_row_verifies_against_the_producer_log_and_a_sealed_one_still_proves_inclusion() -> None:
    events = [envelope(t, PAYLOADS[t]) for t in EVENT_TYPES]
    leaves = [leaf_hash(e) for e in events]  # the producer hashes the plaintext envelope
    root = merkle.root(leaves)
    for i, env in enumerate(events):
        sealed = seal_payload(
            env["event_type"], 1, env["payload"], key_for(1), row_aad(VEHICLE, env["event_id"])
        )
        row = {
            **env,
            "payload": orjson.dumps(sealed).decode(),
            "leaf_hash": leaves[i].hex(),
            "log_index": i,
            "tree_size": len(leaves),
            "root": root.hex(),
        }
        path = [h.hex() for h in merkle.inclusion_proof(leaves, i)]
        verify_row_inclusion(row, path)  # anyone, without a key
        opened = open_payload(
            env["event_type"], 1, orjson.loads(row["payload"]), lookup, row_aad(VEHICLE, env["event_id"])
        )
        assert verify_opened_row(row, opened, path) == leaves[i]
        if env["event_type"] == "maintenance":
            with pytest.raises(ValueError, match="does not hash to the row's leaf hash"):
                verify_opened_row(row, {**opened, "cost_cents": 1}, path)
            with pytest.raises(ValueError, match="does not verify"):
                verify_row_inclusion({**row, "log_index": i + 1}, path)


@given(
    lat=st.floats(min_value=-90, max_value=90, allow_nan=False),
    lon=st.floats(min_value=-180, max_value=180, allow_nan=False),
    ref=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=64),
    cost=st.integers(min_value=0, max_value=2**53 - 1),
)
def test_open_gives_back_exactly_what_was_hashed(lat: float, lon: float, ref: str, cost: int) -> None:
    payload = {
        **PAYLOADS["maintenance"],
        "location": {"lat": lat, "lon": lon},
        "invoice_ref": ref,
        "cost_cents": cost,
    }
    env = envelope("maintenance", payload)
    aad = row_aad(VEHICLE, env["event_id"])
    opened = open_payload(
        "maintenance", 1, seal_payload("maintenance", 1, payload, key_for(), aad), lookup, aad
    )
    assert opened == payload
    assert leaf_hash({**env, "payload": opened}) == leaf_hash(env)


#: Sealed by the first implementation (key 00..1f, epoch 3): stored tokens must keep opening.
STORED_V1 = {
    "cost_cents": "enc:v1:commercial:3:L83tNkiet514SEZa+xMEpGllhecInE+4y+svnoSfW570",
    "invoice_ref": "enc:v1:commercial:3:xYGXyCkCM+KFVgeKwAt+oBpCyK5FIVASv1xM4X352/zoRY8pytWzglkFeg==",
    "location": "enc:v1:precise_location:3:kR24GN5bfUXEyruMd0HBZ3BdNHM+PF/JXbAr34xJe0L8oWZBoK4Yuh8ay"
    "/hDjnJfXdKJNi8VMYxcROoG",
}


def test_tokens_sealed_before_keep_opening() -> None:
    sealed = {"odometer_km": 41300, "service_type": "oil_change", "in_network": True, "items": ["oil"]}
    sealed |= STORED_V1
    aad = row_aad(VEHICLE, "01J0000000000000000000000A")
    opened = open_payload("maintenance", 1, sealed, lambda c, e: bytes(range(32)), aad)
    assert opened["cost_cents"] == 18990 and opened["invoice_ref"] == "INV-2026-0042"
    assert opened["location"] == LOCATION
    with pytest.raises(TamperedCiphertext):  # still bound to its row
        open_payload("maintenance", 1, sealed, lambda c, e: bytes(range(32)), row_aad(VEHICLE, "other"))


def test_nonces_never_repeat_within_a_process_or_across_a_fork() -> None:
    def nonces(payload: dict[str, Any]) -> set[bytes]:
        return {_b64decode(payload[name]) for name in ("cost_cents", "invoice_ref", "location")}

    seen: set[bytes] = set()
    for _ in range(500):  # crosses several refills of the random pool
        fresh = nonces(seal_payload("maintenance", 1, PAYLOADS["maintenance"], key_for(), b"row"))
        assert len(fresh) == 3 and not fresh & seen
        seen |= fresh
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child seals with whatever the parent's pool held next
        child = nonces(seal_payload("maintenance", 1, PAYLOADS["maintenance"], key_for(), b"row"))
        os.write(write, b"".join(sorted(child)))
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        from_child = pipe.read()
    parent = nonces(seal_payload("maintenance", 1, PAYLOADS["maintenance"], key_for(), b"row"))
    child_nonces = {from_child[i : i + 12] for i in range(0, len(from_child), 12)}
    assert len(child_nonces) == 3 and not child_nonces & (parent | seen)


def _b64decode(token: str) -> bytes:
    return base64.b64decode(token.rsplit(":", 1)[1])[:12]


def test_a_nested_protected_member_is_sealed_and_opened_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = {
        "properties": {
            "odometer_km": {"x-pcc-category": "mileage"},
            "workshop": {"properties": {"name": {}, "invoice": {"x-pcc-category": "commercial"}}},
        }
    }
    monkeypatch.setattr("pipelines.access.fields.load_schema", lambda event_type, version: schema)
    payload = {"odometer_km": 5, "workshop": {"name": "Garage Ana", "invoice": {"ref": "F-1", "cents": 900}}}
    sealed = seal_payload("nested_probe", 1, payload, key_for(), b"row")
    assert payload["workshop"]["invoice"] == {"ref": "F-1", "cents": 900}  # input untouched
    assert sealed["workshop"]["name"] == "Garage Ana"
    assert token_info(sealed["workshop"]["invoice"]) == ("commercial", 0)
    assert needed_keys("nested_probe", 1, sealed) == {("commercial", 0)}
    assert open_payload("nested_probe", 1, sealed, lookup, b"row") == payload
    assert seal_payload("nested_probe", 1, {"odometer_km": 5}, key_for(), b"row") == {"odometer_km": 5}
