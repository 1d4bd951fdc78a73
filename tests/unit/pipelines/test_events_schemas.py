"""The versioned event schemas and validation: every type, every kind of bad input, with its path."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.errors import PccNotFoundError, PccValidationError
from pipelines.events import (
    CATEGORIES,
    EVENT_TYPES,
    PROTECTED_CATEGORIES,
    PUBLIC_CATEGORIES,
    field_categories,
    format_time,
    list_schemas,
    load_schema,
    new_event_id,
    parse_time,
    parse_time_ms,
    require_valid,
    top_level_categories,
    utc_ms,
    validate_envelope,
    validate_input,
)
from pipelines.events.validation import _validator

NOW_MS = parse_time_ms("2026-03-01T09:00:00.000Z")
OWNER_A = "o-" + "1" * 32
OWNER_B = "o-" + "2" * 32
LOC = {"lat": 48.8566, "lon": 2.3522}

PAYLOADS: dict[str, dict[str, Any]] = {
    "odometer_reading": {"odometer_km": 41235, "location": LOC, "fuel_level_pct": 62.5, "firmware": "4.2.1"},
    "maintenance": {
        "odometer_km": 41500,
        "service_type": "oil_change",
        "in_network": True,
        "items": ["oil", "filter"],
        "cost_cents": 18950,
        "invoice_ref": "INV-2026-0042",
        "location": LOC,
        "notes": "all good",
    },
    "inspection": {
        "odometer_km": 42000,
        "result": "pass_with_defects",
        "defects": ["worn wiper"],
        "valid_until": "2028-03-01",
        "location": LOC,
    },
    "accident_declaration": {
        "severity": "moderate",
        "claim_ref": "CLM-77",
        "odometer_km": 43000,
        "location": LOC,
        "damage_cents": 250000,
        "description": "rear-ended at a light",
    },
    "wreck_declaration": {"claim_ref": "CLM-78", "reason": "flood", "total_loss": True, "odometer_km": 44000},
    "repair": {
        "repair_type": "bodywork",
        "odometer_km": 43100,
        "related_claim_ref": "CLM-77",
        "cost_cents": 99000,
    },
    "ownership_change": {
        "odometer_km": 45000,
        "new_owner": OWNER_B,
        "previous_owner": OWNER_A,
        "sale_price_cents": 1_250_000,
        "country": "FR",
    },
}


def envelope(event_type: str = "odometer_reading", **changes: Any) -> dict[str, Any]:
    event = {
        "event_id": new_event_id(),
        "event_type": event_type,
        "schema_version": 1,
        "source_id": "cc-aurora",
        "vehicle": "v-3f9a0c4d2b1e8f7a6c5d4e3f2a1b0c9d",
        "event_time": "2026-03-01T08:15:00.000Z",
        "ingestion_time": "2026-03-01T08:15:02.120Z",
        "payload": copy.deepcopy(PAYLOADS[event_type]),
        "proof": {
            "log_index": 4711,
            "tree_size": 5120,
            "root": "a" * 64,
            "path": ["b" * 64] * 13,
            "leaf": "c" * 64,
        },
    }
    event.update(changes)
    return event


def producer_input(event_type: str = "odometer_reading", **changes: Any) -> dict[str, Any]:
    event = envelope(event_type)
    for key in ("vehicle", "ingestion_time", "proof", "event_id"):
        del event[key]
    event["vin"] = "1HGCM82633A004352"
    if event_type == "ownership_change":
        event["payload"]["new_owner"] = {"name": "Ana Lima", "id_number": "X1234567"}
        event["payload"]["previous_owner"] = {"name": "Bo Berg", "id_number": "Y7654321"}
    event.update(changes)
    return event


def problems(event: dict[str, Any], **kw: Any) -> list[str]:
    return [str(p) for p in validate_envelope(event, now_ms=NOW_MS, **kw)]


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_a_full_example_of_each_event_type_is_valid(event_type: str) -> None:
    assert problems(envelope(event_type)) == []


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_only_the_required_payload_fields_are_valid(event_type: str) -> None:
    required = load_schema(event_type, 1)["required"]
    event = envelope(event_type)
    event["payload"] = {k: v for k, v in event["payload"].items() if k in required}
    assert problems(event) == []


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_a_missing_required_payload_field_is_named(event_type: str) -> None:
    for field in load_schema(event_type, 1)["required"]:
        event = envelope(event_type)
        del event["payload"][field]
        assert problems(event) == [f"$.payload: '{field}' is a required property"]


def test_negative_odometer_is_reported_with_its_path() -> None:
    event = envelope(payload={"odometer_km": -5})
    assert problems(event) == ["$.payload.odometer_km: -5 is less than the minimum of 0"]


def test_every_problem_is_reported_not_just_the_first() -> None:
    event = envelope(payload={"odometer_km": -5, "location": {"lat": 91, "lon": 2}, "colour": "red"})
    event["source_id"] = "Bad Source"
    found = problems(event)
    assert "$.payload.odometer_km: -5 is less than the minimum of 0" in found
    assert "$.payload.location.lat: the value is greater than the maximum of 90" in found  # protected: not echoed
    assert any(p.startswith("$.payload: Additional properties are not allowed ('colour'") for p in found)
    assert any(p.startswith("$.source_id: 'Bad Source' does not match") for p in found)
    assert len(found) == 4


@pytest.mark.parametrize(
    ("event_type", "field", "value", "path"),
    [
        ("odometer_reading", "odometer_km", 1.0, "$.payload.odometer_km"),  # decimal where integer expected
        ("odometer_reading", "odometer_km", "41235", "$.payload.odometer_km"),
        ("odometer_reading", "fuel_level_pct", 101, "$.payload.fuel_level_pct"),
        ("maintenance", "service_type", "wash", "$.payload.service_type"),
        ("maintenance", "in_network", 1, "$.payload.in_network"),
        ("maintenance", "cost_cents", 10.5, "$.payload.cost_cents"),
        ("inspection", "result", "ok", "$.payload.result"),
        ("inspection", "valid_until", "2028-02-30", "$.payload.valid_until"),
        ("accident_declaration", "severity", "fatal", "$.payload.severity"),
        ("wreck_declaration", "total_loss", False, "$.payload.total_loss"),
        ("repair", "repair_type", "paint", "$.payload.repair_type"),
        ("ownership_change", "new_owner", "v-" + "1" * 32, "$.payload.new_owner"),
        ("ownership_change", "country", "France", "$.payload.country"),
        ("odometer_reading", "location", {"lat": 1}, "$.payload.location"),
    ],
)
def test_a_bad_payload_value_names_its_path(event_type: str, field: str, value: Any, path: str) -> None:
    event = envelope(event_type)
    event["payload"][field] = value
    found = problems(event)
    assert len(found) == 1, found
    assert found[0].startswith(path + ": ")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", "01936f0e-8a4b-4c3d-9e2f-0123456789ab"),  # a UUIDv4, not v7
        ("event_id", "01936F0E-8A4B-7C3D-9E2F-0123456789AB"),  # upper case
        ("event_type", "tuning"),
        ("source_id", "-cc"),
        ("vehicle", "1HGCM82633A004352"),  # a VIN must never be in an envelope
        ("event_time", "2026-03-01T08:15:00Z"),  # no milliseconds
        ("event_time", "2026-03-01T08:15:00.000+01:00"),
        ("ingestion_time", "2026-13-01T08:15:00.000Z"),  # month 13
        ("schema_version", "1"),
        ("payload", []),
    ],
)
def test_a_bad_envelope_field_names_its_path(field: str, value: Any) -> None:
    event = envelope()
    event[field] = value
    found = problems(event)
    assert found and all(p.startswith(f"$.{field}: ") for p in found), found


def test_missing_envelope_fields_and_extra_ones_are_reported() -> None:
    event = envelope()
    del event["vehicle"]
    event["vin"] = "1HGCM82633A004352"
    found = problems(event)
    assert "$: 'vehicle' is a required property" in found
    assert any("'vin' was unexpected" in p for p in found)


def test_the_proof_is_optional_but_checked_when_present() -> None:
    event = envelope()
    del event["proof"]
    assert problems(event) == []
    event = envelope()
    event["proof"]["log_index"] = 5120
    assert problems(event) == ["$.proof.log_index: 5120 is not below tree_size 5120"]
    event["proof"] = {"log_index": 1, "tree_size": 2, "root": "zz", "path": [], "leaf": "c" * 64}
    assert [p.split(":")[0] for p in problems(event)] == ["$.proof.root"]


def test_unknown_schema_version_is_reported() -> None:
    assert problems(envelope(schema_version=3)) == [
        "$.schema_version: 3 is greater than the maximum of 2",
        "$.schema_version: unknown version 3 of odometer_reading (known: 1, 2)",
    ]


def test_event_time_in_the_future_beyond_the_tolerance_is_reported() -> None:
    in_tolerance = envelope(event_time="2026-03-01T09:04:00.000Z", ingestion_time="2026-03-01T09:04:00.000Z")
    assert problems(in_tolerance, future_tolerance_s=300) == []
    ahead = envelope(event_time="2026-03-01T10:00:00.000Z", ingestion_time="2026-03-01T09:00:00.000Z")
    assert problems(ahead, future_tolerance_s=300) == [
        "$.event_time: 2026-03-01T10:00:00.000Z is 3600 s in the future (tolerance 300 s)",
        "$.event_time: 2026-03-01T10:00:00.000Z is after ingestion_time 2026-03-01T09:00:00.000Z",
    ]


def test_require_valid_raises_with_every_problem() -> None:
    event = envelope(payload={"odometer_km": -5, "x": 1})
    with pytest.raises(PccValidationError) as info:
        require_valid(event, now_ms=NOW_MS)
    assert str(info.value).startswith(f"invalid event {event['event_id']}: ")
    assert len(info.value.problems) == 2
    assert require_valid(envelope(), now_ms=NOW_MS)["event_type"] == "odometer_reading"


# --- producer input ---------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_producer_input_of_each_type_is_valid(event_type: str) -> None:
    assert validate_input(producer_input(event_type), now_ms=NOW_MS) == []
    given_id = producer_input(event_type, event_id=new_event_id())
    assert validate_input(given_id, now_ms=NOW_MS) == []


def test_producer_input_rejects_envelope_only_fields_and_owner_pseudonyms() -> None:
    event = producer_input("ownership_change", vehicle="v-" + "a" * 32)
    event["payload"]["new_owner"] = OWNER_B
    found = [str(p) for p in validate_input(event, now_ms=NOW_MS)]
    assert any("'vehicle' was unexpected" in p for p in found)
    assert any(p.startswith("$.payload.new_owner: ") for p in found)


def test_producer_input_vin_problems_never_echo_the_vin() -> None:
    bad_check_digit = "1HGCM82623A004352"
    found = [str(p) for p in validate_input(producer_input(vin=bad_check_digit), now_ms=NOW_MS)]
    assert found == ["$.vin: check digit (position 9) does not match the other characters"]
    bad_alphabet = "1HGCM8263OA004352"
    found = [str(p) for p in validate_input(producer_input(vin=bad_alphabet), now_ms=NOW_MS)]
    assert len(found) == 1 and found[0].startswith("$.vin: ") and bad_alphabet not in found[0]


def test_owner_identity_problems_never_echo_the_identity() -> None:
    event = producer_input("ownership_change")
    event["payload"]["new_owner"] = {"name": "Ana Lima", "id_number": 12345678}
    found = [str(p) for p in validate_input(event, now_ms=NOW_MS)]
    assert [p.split(":")[0] for p in found] == ["$.payload.new_owner.id_number"]
    assert "12345678" not in found[0]
    event = envelope("ownership_change")
    event["payload"]["new_owner"] = {
        "name": "Ana Lima",
        "id_number": "X1",
    }  # identity where a pseudonym belongs
    found = problems(event)
    assert len(found) == 1 and "Ana Lima" not in found[0]


# --- schemas, categories, times ---------------------------------------------------------------


def test_schemas_are_listed_and_loadable_by_name() -> None:
    names = {name for name, _ in list_schemas()}
    assert names == set(EVENT_TYPES) | {"envelope", "producer_input", "ownership_change_input"}
    for name, version in list_schemas():
        schema = load_schema(name, version)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"urn:pcc:schema:{name}.v{version}"
    with pytest.raises(PccNotFoundError, match=r"no schema odometer_reading\.v9"):
        load_schema("odometer_reading", 9)


@pytest.mark.parametrize("name", [*EVENT_TYPES, "ownership_change_input"])
def test_every_payload_field_has_a_category_and_no_extra_properties(name: str) -> None:
    def walk(schema: dict[str, Any], path: str) -> None:
        if schema.get("type") == "object":
            assert schema.get("additionalProperties") is False, path
        for field, sub in schema.get("properties", {}).items():
            assert sub.get("x-pcc-category") in CATEGORIES, f"{path}.{field}"
            walk(sub, f"{path}.{field}")

    walk(load_schema(name, 1), "$.payload")


def test_field_categories_follow_the_contract() -> None:
    assert PUBLIC_CATEGORIES | PROTECTED_CATEGORIES == CATEGORIES
    assert not PUBLIC_CATEGORIES & PROTECTED_CATEGORIES
    cats = field_categories("maintenance", 1)
    assert cats["$.payload.odometer_km"] == "mileage"
    assert cats["$.payload.cost_cents"] == "commercial"
    assert cats["$.payload.location"] == "precise_location"
    assert cats["$.payload.location.lat"] == "precise_location"
    assert top_level_categories("ownership_change") == {
        "odometer_km": "mileage",
        "new_owner": "owner_identity",
        "previous_owner": "owner_identity",
        "sale_price_cents": "commercial",
        "country": "owner_identity",
    }


def test_envelope_schema_file_dispatches_payloads_for_other_language_validators() -> None:
    """The shipped envelope schema alone (with its $refs) rejects a bad payload, as producers elsewhere use it."""
    full = _validator("envelope", 1).validator  # with the allOf dispatch
    event = envelope("inspection")
    assert list(full.iter_errors(event)) == []
    event["payload"]["result"] = "ok"
    assert [e.json_path for e in full.iter_errors(event)] == ["$.payload.result"]


def test_time_helpers_round_trip_milliseconds() -> None:
    text = "2026-03-01T08:15:00.120Z"
    dt = parse_time(text)
    assert format_time(dt) == text
    assert utc_ms(dt) == parse_time_ms(text) == 1772352900120
    assert format_time(1772352900120) == text
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("2026-03-01 08:15:00")


def test_new_event_ids_are_time_ordered_uuid7() -> None:
    ids = [new_event_id() for _ in range(100)]
    assert all(i[14] == "7" for i in ids)
    assert ids == sorted(ids)
    assert problems(envelope(event_id=ids[0])) == []


# --- the fast acceptance check agrees with jsonschema -----------------------------------------

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**7),
    st.floats(-200, 200, allow_nan=False),
    st.sampled_from(["", "pass", "oil_change", "FR", "o-" + "1" * 32, "2028-02-30", "2028-02-28", "x" * 70]),
    st.just({"lat": 1.5}),
    st.just(["a", 1]),
)


@settings(max_examples=400, deadline=None)
@given(
    event_type=st.sampled_from(EVENT_TYPES),
    mutations=st.lists(
        st.tuples(st.sampled_from(["odometer_km", "location", "result", "country", "x"]), _values), max_size=3
    ),
    drop=st.booleans(),
)
def test_fast_check_accepts_exactly_what_jsonschema_accepts(
    event_type: str, mutations: list[tuple[str, Any]], drop: bool
) -> None:
    payload = copy.deepcopy(PAYLOADS[event_type])
    if drop:
        payload.pop(next(iter(payload)))
    for key, value in mutations:
        payload[key] = value
    compiled = _validator(event_type, 1)
    assert compiled.accepts is not None
    assert compiled.accepts(payload) == compiled.validator.is_valid(payload)
