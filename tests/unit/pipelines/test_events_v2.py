"""Event contract version 2: hiding commitments, sealed values, test vectors another implementation checks."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from hashlib import sha256
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import merkle
from pipelines.access import (
    TamperedCiphertext,
    open_held,
    open_payload,
    public_envelope,
    row_aad,
    seal_event,
    stored_payload,
    verify_opened_row,
    verify_public_row,
)
from pipelines.access import vectors as vector_module
from pipelines.access.fields import cipher_of
from pipelines.canonical import canonical_bytes, leaf_data, leaf_hash
from pipelines.events import (
    EVENT_TYPES,
    PROTECTED_CATEGORIES,
    load_schema,
    parse_event,
    validate_envelope,
    validate_input,
)
from pipelines.events.commitments import commitment
from pipelines.events.derive import SCHEMA_DIR, derived
from tests.unit.pipelines.test_access_fields import KEYS, PAYLOADS, envelope, key_for

VECTOR_DIR = Path(__file__).resolve().parents[3] / "pipelines" / "events" / "vectors"
NOW_MS = 1_773_000_000_000  # after every envelope time used here (2026-03-08)


def sealed(event_type: str, epoch: int = 0) -> dict[str, Any]:
    return seal_event(envelope(event_type, PAYLOADS[event_type]), key_for(epoch))


def row_of(wire: dict[str, Any]) -> dict[str, Any]:
    """What a view keeps of an accepted version 2 event (a one-leaf log)."""
    leaf = leaf_hash(wire)
    fields = (
        "event_id",
        "event_type",
        "schema_version",
        "source_id",
        "vehicle",
        "event_time",
        "ingestion_time",
    )
    return {
        **{k: wire[k] for k in fields},
        "payload": canonical_bytes(stored_payload(wire)).decode(),
        "leaf_hash": leaf.hex(),
        "log_index": 0,
        "tree_size": 1,
        "root": merkle.root([leaf]).hex(),
    }


def ciphers(epoch: int = 0) -> dict[tuple[str, int], Any]:
    return {(c, epoch): cipher_of(c, epoch, KEYS[(c, epoch)]) for c in PROTECTED_CATEGORIES}


# --- the shipped files ------------------------------------------------------------------------


def test_version_2_schemas_are_what_derive_makes_of_version_1() -> None:
    for name, text in derived().items():
        assert (SCHEMA_DIR / name).read_text(encoding="utf-8") == text, (
            f"{name} is stale: run python -m pipelines.events.derive"
        )


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_protected_member_is_a_commitment_with_its_value_rules_kept(event_type: str) -> None:
    v1, v2 = load_schema(event_type, 1)["properties"], load_schema(event_type, 2)["properties"]
    for name, sub in v1.items():
        if sub["x-pcc-category"] in PROTECTED_CATEGORIES:
            assert v2[name]["pattern"] == "^cm:[0-9a-f]{64}$"
            assert v2[name]["x-pcc-category"] == sub["x-pcc-category"]
            assert v2[name]["x-pcc-value"]["type"] == sub["type"]
        else:
            assert v2[name] == sub
    assert ("region" in v2) == ("location" in v1)


def test_vectors_are_what_the_python_implementation_makes() -> None:
    assert (VECTOR_DIR / "v2.json").read_text(encoding="utf-8") == vector_module.text(), (
        "run python -m pipelines.access.vectors"
    )


def test_vectors_recomputed_from_their_inputs_in_python() -> None:
    doc = json.loads((VECTOR_DIR / "v2.json").read_text(encoding="utf-8"))
    for case in doc["cases"]:
        wire = case["envelope"]
        for name, member in case["members"].items():
            salt = bytes.fromhex(member["salt"])
            assert (
                commitment(salt, case["clear"]["payload"][name])
                == member["commitment"]
                == wire["payload"][name]
            )
        assert (
            canonical_bytes({k: v for k, v in wire.items() if k != "sealed"}).decode() == case["hashed_jcs"]
        )
        assert leaf_data(wire).hex() == case["leaf_data"]
        assert sha256(b"\x00" + bytes.fromhex(case["leaf_data"])).hexdigest() == case["leaf_hash"]
        assert validate_envelope(wire, now_ms=NOW_MS) == []
    for value in doc["values"]:
        assert commitment(bytes.fromhex(value["salt"]), value["value"]) == value["commitment"]


def test_a_second_implementation_in_node_recomputes_the_vectors() -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js (>= 20) is needed to check the vectors from a second implementation"
    run = subprocess.run(
        [node, str(VECTOR_DIR / "verify.mjs"), str(VECTOR_DIR / "v2.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads((VECTOR_DIR / "v2.json").read_text(encoding="utf-8"))
    assert f"{len(doc['cases']) + len(doc['values'])} passed, 0 failed" in run.stdout


# --- sealing, validation, opening --------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_a_sealed_event_is_valid_carries_no_protected_value_and_opens_to_it(event_type: str) -> None:
    clear = PAYLOADS[event_type]
    wire = seal_event(envelope(event_type, clear), key_for(1))
    assert wire["schema_version"] == 2 and validate_envelope(wire, now_ms=NOW_MS) == []
    text = orjson.dumps(wire).decode()
    for name, value in clear.items():
        if load_schema(event_type, 1)["properties"][name]["x-pcc-category"] in PROTECTED_CATEGORIES:
            assert wire["payload"][name].startswith("cm:")
            for leaf_value in value.values() if isinstance(value, dict) else [value]:
                assert json.dumps(leaf_value) not in text
    row = row_of(wire)
    assert leaf_hash(public_envelope(row)).hex() == row["leaf_hash"]  # anyone: public fields + commitments
    salts: dict[str, bytes] = {}
    opened = open_held(event_type, 2, orjson.loads(row["payload"]), ciphers(1), row_aad(wire["vehicle"], wire["event_id"]), salts=salts)  # fmt: skip
    assert {k: v for k, v in opened.items() if k != "region"} == clear
    verify_opened_row(row, opened, [], salts=salts)


def test_the_same_value_twice_gives_unrelated_commitments() -> None:
    a, b = sealed("maintenance"), sealed("maintenance")
    assert a["payload"]["cost_cents"] != b["payload"]["cost_cents"]


def test_a_protected_field_in_clear_on_version_2_is_refused_naming_its_path_not_its_value() -> None:
    wire = sealed("maintenance")
    wire["payload"]["cost_cents"] = 18990
    problems = validate_envelope(wire, now_ms=NOW_MS)
    assert [p.path for p in problems] == ["$.payload.cost_cents"]
    assert "in clear" in problems[0].message and "18990" not in problems[0].message
    wire = sealed("maintenance")
    wire["payload"]["location"] = {"lat": 48.856613, "lon": 2.352222}
    (problem,) = validate_envelope(wire, now_ms=NOW_MS)
    assert problem.path == "$.payload.location" and "48.85" not in problem.message


@pytest.mark.parametrize(
    ("change", "path", "says"),
    [
        (lambda w: w["sealed"].pop("cost_cents"), "$.sealed.cost_cents", "missing"),
        (lambda w: w["sealed"].update(notes=w["sealed"]["cost_cents"]), "$.sealed.notes", "no committed"),
        (
            lambda w: w["sealed"].update(cost_cents=w["sealed"]["invoice_ref"]),
            "$.sealed.cost_cents",
            "another commitment",
        ),
        (
            lambda w: w["sealed"].update(cost_cents=w["sealed"]["location"]),
            "$.sealed.cost_cents",
            "sealed as 'precise_location'",
        ),
        (
            lambda w: w["payload"].update(cost_cents="cm:" + "0" * 64),
            "$.sealed.cost_cents",
            "another commitment",
        ),
    ],
)
def test_sealed_values_must_match_the_commitments(change: Any, path: str, says: str) -> None:
    wire = sealed("maintenance")
    change(wire)
    problems = validate_envelope(wire, now_ms=NOW_MS)
    assert [p.path for p in problems] == [path] and says in problems[0].message


def test_version_1_stays_valid_and_may_not_carry_sealed_values() -> None:
    clear = envelope("maintenance", PAYLOADS["maintenance"])
    assert validate_envelope(clear, now_ms=NOW_MS) == []
    clear["sealed"] = {}
    assert [p.path for p in validate_envelope(clear, now_ms=NOW_MS)] == ["$.sealed"]


def test_producer_input_naming_version_2_is_checked_against_the_clear_rules() -> None:
    raw = {"event_type": "maintenance", "schema_version": 2, "source_id": "garage-net-03",
           "vin": "WVWZZZ1JZXW000001", "event_time": "2026-03-01T08:15:00.000Z",
           "payload": {**PAYLOADS["maintenance"], "cost_cents": -5}}  # fmt: skip
    (problem,) = validate_input(raw, now_ms=NOW_MS)
    assert problem.path == "$.payload.cost_cents" and "-5" not in problem.message


def test_a_value_that_does_not_match_its_commitment_is_tampered_for_a_grantee() -> None:
    """A producer (or anyone with the key) sealing another value than the one it committed to."""
    wire = sealed("maintenance")
    aad = row_aad(wire["vehicle"], wire["event_id"])
    field_aad = aad + b"\x00$.payload.cost_cents\x00commercial\x000"
    aead = cipher_of("commercial", 0, KEYS[("commercial", 0)])[0]
    nonce = bytes(12)
    forged = aead.encrypt(nonce, bytes(16) + b"1", field_aad)  # authentic, but not the committed value
    head = wire["sealed"]["cost_cents"].rsplit(":", 1)[0]
    stored = stored_payload(wire) | {"cost_cents": head + ":" + base64.b64encode(nonce + forged).decode()}
    with pytest.raises(TamperedCiphertext, match=r"\$\.payload\.cost_cents: tampered"):
        open_held("maintenance", 2, stored, ciphers(), aad)
    with pytest.raises(TamperedCiphertext, match="tampered"):
        open_payload("maintenance", 2, stored, lambda c, e: KEYS[(c, e)], aad)


def test_a_public_field_changed_in_a_view_fails_the_public_check() -> None:
    wire = sealed("maintenance")
    row = row_of(wire)
    verify_public_row(row, [])
    changed = dict(row, payload=row["payload"].replace('"odometer_km":41300', '"odometer_km":31300'))
    with pytest.raises(Exception, match="do not hash"):
        verify_public_row(changed, [])


@settings(max_examples=60, deadline=None)
@given(
    cost=st.integers(min_value=0, max_value=2**53 - 1),
    ref=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=64),
    lat=st.floats(min_value=-90, max_value=90, allow_nan=False),
    lon=st.floats(min_value=-180, max_value=180, allow_nan=False),
)
def test_any_payload_round_trips_and_verifies(cost: int, ref: str, lat: float, lon: float) -> None:
    payload = {"odometer_km": 1, "service_type": "other", "in_network": False, "cost_cents": cost,
               "invoice_ref": ref, "location": {"lat": lat, "lon": lon}}  # fmt: skip
    wire = seal_event(envelope("maintenance", payload), key_for(2))
    assert parse_event(orjson.dumps(wire)) == wire  # strict parsing accepts every sealed event as sent
    row = row_of(wire)
    salts: dict[str, bytes] = {}
    opened = open_held("maintenance", 2, orjson.loads(row["payload"]), ciphers(2), row_aad(wire["vehicle"], wire["event_id"]), salts=salts)  # fmt: skip
    assert (
        opened["cost_cents"] == cost
        and opened["invoice_ref"] == ref
        and opened["location"] == payload["location"]
    )
    verify_opened_row(row, opened, [], salts=salts)
    verify_public_row(row, [])


_MEMBERS = ("cost_cents", "invoice_ref", "location", "notes")


def _edit(wire: dict[str, Any], edit: tuple[str, str, str]) -> None:
    """One hostile edit of a sealed event's tokens or commitments (the kinds a producer could send)."""
    kind, name, other = edit
    tokens, payload = wire["sealed"], wire["payload"]
    if not isinstance(tokens, dict):  # already replaced by a list: nothing more to edit there
        return
    if kind == "drop_token":
        tokens.pop(name, None)
    elif kind == "copy_token" and other in tokens:  # another member's token, in its place or as an extra
        tokens[name] = tokens[other]
    elif kind == "relabel" and name in tokens:
        tokens[name] = tokens[name].replace(":commercial:", ":owner_identity:", 1)
    elif kind == "v1_token" and name in tokens:
        tokens[name] = tokens[name].replace("enc:v2:", "enc:v1:", 1)
    elif kind == "commitment" and name in payload:
        payload[name] = "cm:" + sha256(other.encode()).hexdigest()
    elif kind == "clear":
        payload[name] = other
    elif kind == "drop_member":
        payload.pop(name, None)
    elif kind == "tokens_not_object":
        wire["sealed"] = [tokens]


@settings(max_examples=200, deadline=None)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["drop_token", "copy_token", "relabel", "v1_token", "commitment",
                             "clear", "drop_member", "tokens_not_object"]),
            st.sampled_from(_MEMBERS),
            st.sampled_from(_MEMBERS),
        ),
        max_size=3,
    )
)  # fmt: skip
def test_the_fast_check_of_commitments_agrees_with_the_full_report(edits: list[tuple[str, str, str]]) -> None:
    from pipelines.events.validation import _committed_problems, _committed_report

    wire = sealed("maintenance")
    for edit in edits:
        _edit(wire, edit)
    report = _committed_report("maintenance", wire["payload"], wire.get("sealed"))
    assert _committed_problems("maintenance", wire["payload"], wire.get("sealed")) == report
