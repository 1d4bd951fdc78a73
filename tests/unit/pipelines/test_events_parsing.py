"""Strict parsing of wire bytes: one meaning per message, every rejection names where."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.errors import PccValidationError
from pipelines.events import MAX_SAFE_INTEGER, parse_event


def rejected(raw: bytes, **kw: Any) -> list[str]:
    with pytest.raises(PccValidationError) as info:
        parse_event(raw, **kw)
    return info.value.problems


def test_a_plain_object_parses() -> None:
    raw = b'{"payload": {"odometer_km": 41235, "location": {"lat": 48.8566, "lon": -2.35}}, "ok": true}'
    assert parse_event(raw) == json.loads(raw)


def test_duplicate_keys_are_rejected_at_their_path() -> None:
    assert rejected(b'{"payload": {"odometer_km": 1, "odometer_km": 900000}}') == [
        "$.payload.odometer_km: duplicate key 'odometer_km' in the same object"
    ]


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        ("1.0", "number 1.0 is an integer written as a decimal; write 1"),
        ("1e3", "number 1e3 has an exponent; write it out in plain decimal"),
        ("1E-2", "number 1E-2 has an exponent; write it out in plain decimal"),
        ("45.10", "number 45.10 is not in canonical form; write 45.1"),
        ("-0", "number -0 is not canonical; write 0"),
        ("NaN", "NaN is not a JSON number"),
        ("-Infinity", "-Infinity is not a JSON number"),
        (
            str(MAX_SAFE_INTEGER + 1),
            f"integer {MAX_SAFE_INTEGER + 1} is beyond ±(2^53 - 1), the range every JSON reader handles exactly",
        ),
    ],
)
def test_non_canonical_numbers_are_rejected_with_their_path(literal: str, message: str) -> None:
    raw = ('{"payload": {"items": [1, ' + literal + "]}}").encode()
    assert rejected(raw) == [f"$.payload.items[1]: {message}"]


def test_canonical_numbers_at_the_edges_are_accepted() -> None:
    raw = f'{{"a": {MAX_SAFE_INTEGER}, "b": -{MAX_SAFE_INTEGER}, "c": 0.00001, "d": -0.5, "e": 0}}'.encode()
    assert parse_event(raw) == {
        "a": MAX_SAFE_INTEGER,
        "b": -MAX_SAFE_INTEGER,
        "c": 0.00001,
        "d": -0.5,
        "e": 0,
    }


def test_all_problems_of_a_message_are_listed() -> None:
    found = rejected(b'{"a": 1.0, "b": {"c": 2, "c": 3}, "d": [NaN]}')
    assert found == [
        "$.a: number 1.0 is an integer written as a decimal; write 1",
        "$.b.c: duplicate key 'c' in the same object",
        "$.d[0]: NaN is not a JSON number",
    ]


def test_oversized_messages_are_rejected_before_parsing() -> None:
    raw = b'{"notes": "' + b"x" * 100 + b'"}'
    assert rejected(raw, max_bytes=64) == [f"$: message is {len(raw)} bytes, more than the limit of 64"]
    assert parse_event(raw, max_bytes=len(raw))["notes"] == "x" * 100


def test_invalid_utf8_names_the_byte() -> None:
    assert rejected(b'{"a": "caf\xc3"}') == ["$: invalid UTF-8 at byte 10 (invalid continuation byte)"]


def test_lone_surrogates_are_rejected() -> None:
    assert rejected(b'{"name": "\\ud800x"}') == ["$.name: string contains a lone UTF-16 surrogate escape"]
    assert parse_event(b'{"name": "\\ud83d\\ude97"}') == {"name": "\U0001f697"}


@pytest.mark.parametrize(
    ("raw", "start"),
    [
        (b'{"a": 1,}', "$: not valid JSON at line 1 column 9"),
        (b"[1, 2]", "$: expected a JSON object, got list"),
        (b"null", "$: expected a JSON object, got null"),
        (b"\xef\xbb\xbf{}", "$: message starts with a UTF-8 byte order mark"),
        (b"[" * 5000 + b"]" * 5000, "$: "),
        (b'{"a": 1.0, "b": }', "$: not valid JSON at line 1 column 17"),
    ],
)
def test_malformed_messages_name_the_position(raw: bytes, start: str) -> None:
    found = rejected(raw, max_bytes=20_000)
    assert len(found) == 1 and found[0].startswith(start), found


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(doc=json_values)
def test_any_json_document_round_trips_or_fails_with_a_validation_error(doc: Any) -> None:
    raw = json.dumps({"doc": doc}).encode()
    try:
        parsed = parse_event(raw, max_bytes=1 << 20)
    except PccValidationError as exc:
        assert exc.problems
        return
    assert parsed == json.loads(raw)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_fail_with_a_validation_error(raw: bytes) -> None:
    try:
        parsed = parse_event(raw)
    except PccValidationError:
        return
    assert isinstance(parsed, dict)


safe_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(alphabet=st.characters(exclude_categories=("Cs",))),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(doc=st.dictionaries(st.text(max_size=5), safe_values, max_size=5))
def test_canonical_documents_are_always_accepted(doc: dict[str, Any]) -> None:
    assert parse_event(json.dumps(doc, ensure_ascii=False).encode(), max_bytes=1 << 20) == doc


def _strict_answer(raw: bytes) -> Any:
    """What the strict parser alone answers: the value, or the problems it names."""
    from pipelines.events.parsing import _parse_strictly

    try:
        return _parse_strictly(raw)
    except PccValidationError as exc:
        return ("refused", exc.problems)


def _answer(raw: bytes) -> Any:
    try:
        return parse_event(raw, max_bytes=1 << 20)
    except PccValidationError as exc:
        return ("refused", exc.problems)


number_literals = st.sampled_from(
    ["1.0", "-0", "-0.0", "1e3", "1E+3", "2.5e-7", "45.10", "0.000001", "9007199254740992", "1e+16",
     "10000000000000000.0", "0.1", "-7", "123.456", "1.5e300"]
)  # fmt: skip


def _hostile(raw: bytes, edit: tuple[str, int, str]) -> bytes:
    """One edit a hostile or careless producer could make to a compact message."""
    kind, at, literal = edit
    at = at % (len(raw) + 1)
    if kind == "number":  # a number literal of any form as a member of the top object
        return raw[:-1] + (b"," if raw != b"{}" else b"") + b'"n":' + literal.encode() + b"}"
    if kind == "duplicate":  # the first member again at the end
        first = raw[1 : raw.find(b",") if b"," in raw else -1]
        return raw[:-1] + (b"," + first if first else b"") + b"}"
    if kind == "space":
        return raw[:at] + b" " + raw[at:]
    if kind == "escape":
        return raw.replace(b"a", b"\\u0061", 1)
    return raw[:at] + raw[at + 1 :]  # a byte dropped


@settings(max_examples=500, deadline=None)
@given(
    doc=st.dictionaries(st.text(max_size=6), json_values, max_size=6),
    edits=st.lists(
        st.tuples(st.sampled_from(["number", "duplicate", "space", "escape", "drop"]), st.integers(0, 400),
                  number_literals),
        max_size=2,
    ),
)  # fmt: skip
def test_the_compiled_path_answers_what_the_strict_parser_answers(
    doc: dict[str, Any], edits: list[Any]
) -> None:
    import orjson

    try:
        raw = orjson.dumps(doc)
    except orjson.JSONEncodeError:  # a lone surrogate or an integer orjson cannot write
        raw = json.dumps(doc).encode()
    for edit in edits:
        raw = _hostile(raw, edit)
    assert _answer(raw) == _strict_answer(raw)


@settings(max_examples=300, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**64), 2**64))
def test_every_number_orjson_writes_is_judged_as_the_strict_parser_judges_it(value: float) -> None:
    import orjson

    try:
        raw = orjson.dumps({"odometer_km": value, "lat": [value]})
    except orjson.JSONEncodeError:
        raw = json.dumps({"odometer_km": value, "lat": [value]}).encode()
    assert _answer(raw) == _strict_answer(raw)


def test_an_event_as_the_producer_sends_it_takes_the_compiled_path() -> None:
    from pipelines.events import parsing

    raw = (
        b'{"event_id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","payload":{"odometer_km":41300,'
        b'"location":{"lat":48.856613,"lon":2.352222},"cost_cents":18990},"proof":{"path":["3e5a","1e9f"]}}'
    )
    assert parsing._as_sent(raw) == json.loads(raw) == parse_event(raw)
    assert parsing._as_sent(raw.replace(b"41300", b"41300.0")) is None  # the strict path decides that one
