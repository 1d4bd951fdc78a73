"""Canonical JSON (RFC 8785) and the envelope leaf hash."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.canonical import canonical_bytes, envelope_without_proof, leaf_data, leaf_hash
from pipelines.errors import PccValueError
from tests.fixtures import vectors

JCS_VECTORS = vectors.VECTORS / "jcs"
JCS_FILES = vectors.vector_files(JCS_VECTORS / "input")

ENVELOPE: dict[str, Any] = {
    "event_id": "01936f0e-8a4b-7c3d-9e2f-0123456789ab",
    "event_type": "odometer_reading",
    "schema_version": 1,
    "source_id": "cc-aurora",
    "vehicle": "v-3f9a0c4d2b1e8f7a6c5d4e3f2a1b0c9d",
    "event_time": "2026-03-01T08:15:00.000Z",
    "ingestion_time": "2026-03-01T08:15:02.120Z",
    "payload": {"odometer_km": 41235, "location": {"lat": 48.8566, "lon": 2.3522}},
    "proof": {
        "log_index": 4711,
        "tree_size": 5120,
        "root": "00" * 32,
        "path": ["11" * 32],
        "leaf": "22" * 32,
    },
}


def test_jcs_vectors_found() -> None:
    assert len(JCS_FILES) >= 6


@pytest.mark.parametrize("name", JCS_FILES)
def test_jcs_vector(name: str) -> None:
    parsed = json.loads((JCS_VECTORS / "input" / name).read_text(encoding="utf-8"))
    expected = (JCS_VECTORS / "output" / name).read_bytes()
    assert canonical_bytes(parsed) == expected


def test_envelope_hash_ignores_proof_and_key_order() -> None:
    without = envelope_without_proof(ENVELOPE)
    assert "proof" not in without and "proof" in ENVELOPE
    shuffled_items = list(ENVELOPE.items())
    random.Random(7).shuffle(shuffled_items)
    other = dict(shuffled_items)
    other["proof"] = {"log_index": 1}
    assert leaf_data(other) == leaf_data(ENVELOPE)
    assert leaf_hash(other) == leaf_hash(ENVELOPE)


def test_leaf_hash_is_rfc6962_leaf_of_sha256_of_jcs() -> None:
    # Independently: sorted keys, no whitespace is JCS for this ASCII, integer/short-float envelope.
    jcs = json.dumps(envelope_without_proof(ENVELOPE), sort_keys=True, separators=(",", ":")).encode()
    assert canonical_bytes(envelope_without_proof(ENVELOPE)) == jcs
    data = hashlib.sha256(jcs).digest()
    assert leaf_data(ENVELOPE) == data
    assert leaf_hash(ENVELOPE) == hashlib.sha256(b"\x00" + data).digest()
    assert len(leaf_hash(ENVELOPE)) == 32


def test_any_field_change_changes_the_hash() -> None:
    changed = json.loads(json.dumps(ENVELOPE))
    changed["payload"]["odometer_km"] = 41236
    assert leaf_hash(changed) != leaf_hash(ENVELOPE)


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"payload": {"location": {"lat": float("nan")}}}, "$.payload.location.lat"),
        ({"payload": {"items": [1, float("inf")]}}, "$.payload.items[1]"),
        ({"payload": {1: "x"}}, "$.payload: object key 1"),
        ({"payload": {"odometer_km": 2**60}}, "$.payload.odometer_km"),
        ({"payload": {"notes": "bad \ud800"}}, "$.payload.notes"),
        ({"payload": {"blob": b"raw"}}, "$.payload.blob: bytes"),
        ({"payload": {"my key": {"\udc00": 1}}}, '$.payload["my key"]'),
    ],
)
def test_non_json_values_are_rejected_naming_the_path(value: Any, path: str) -> None:
    with pytest.raises(PccValueError, match=r"^value cannot be canonicalized") as info:
        leaf_hash(value)
    assert path in str(info.value)


def test_envelope_must_be_an_object() -> None:
    with pytest.raises(PccValueError, match="must be a JSON object"):
        leaf_data(["not", "an", "object"])  # type: ignore[arg-type]


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    # Integral floats of 2**53 and more print as integer digits that a JSON parser reads back as
    # integers beyond the exact range, which JCS then refuses; payload schemas never carry them.
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: abs(x) < 2**53 or x != int(x))
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def _reorder(value: Any, rnd: random.Random) -> Any:
    if isinstance(value, dict):
        items = [(k, _reorder(v, rnd)) for k, v in value.items()]
        rnd.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [_reorder(v, rnd) for v in value]
    return value


@settings(max_examples=300, deadline=None)
@given(value=json_values, seed=st.integers(0, 2**32))
def test_canonical_bytes_stable_under_reordering_and_reparsing(value: Any, seed: int) -> None:
    canon = canonical_bytes(value)
    assert canonical_bytes(_reorder(value, random.Random(seed))) == canon
    assert canonical_bytes(json.loads(json.dumps(value, ensure_ascii=False))) == canon
    assert canonical_bytes(json.loads(canon)) == canon  # canonical form is a fixed point


# --- the orjson fast path must give exactly the rfc8785 bytes wherever it is taken ---------------

_fast_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1),
    st.floats(min_value=1e-4, max_value=1e15, exclude_max=True).filter(lambda x: not x.is_integer()),
    st.floats(min_value=-1e15, max_value=-1e-4, exclude_min=True).filter(lambda x: not x.is_integer()),
    st.text(),
)
_fast_docs = st.recursive(
    _fast_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(alphabet=st.characters(max_codepoint=127)), inner, max_size=5)
    ),
    max_leaves=30,
)


def _reference_bytes_or_refused(doc: Any) -> None:
    """``canonical_bytes`` gives rfc8785's bytes, or refuses (PccValueError) what rfc8785 refuses."""
    import rfc8785

    try:
        expected = rfc8785.dumps(doc)
    except Exception:
        with pytest.raises(PccValueError):
            canonical_bytes(doc)
        return
    assert canonical_bytes(doc) == expected


@given(_fast_docs)
def test_fast_path_bytes_equal_the_reference_implementation(doc):
    _reference_bytes_or_refused(doc)


_any_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),  # beyond ±(2**53 - 1) too
    st.floats(allow_nan=False, allow_infinity=False),  # integral, tiny and huge ones too
    st.text(),
)
_any_docs = st.recursive(
    _any_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(_any_docs)
def test_any_document_gets_the_reference_bytes_or_a_clear_refusal(doc: Any) -> None:
    """Whichever path a value takes (orjson with sorted keys or rfc8785), its bytes are RFC 8785's."""
    _reference_bytes_or_refused(doc)
