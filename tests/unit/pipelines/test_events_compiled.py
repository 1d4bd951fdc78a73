"""The compiled contract checks accept and refuse exactly what the published JSON Schemas do.

Documents are generated from each schema itself: every member drawn near its
constraints (pattern matches and near misses, numbers at and beyond the
bounds, dates that are not days), then members dropped, added or replaced by
any JSON value.  The compiled check (msgspec, or the Python predicates where
msgspec cannot express a schema) must agree with ``jsonschema``.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, find, given, settings
from hypothesis import strategies as st

from pipelines.events import list_schemas, load_schema
from pipelines.events.fastcheck import _msgspec_check, _Unsupported, compile_check, compile_python_check
from pipelines.events.registry import schema_registry
from pipelines.events.validation import _FORMATS, _StrictValidator

_ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten: a document with a dozen members is then often valid as a whole."""
    return st.integers(0, 9).flatmap(lambda k: good if k < 9 else bad)


def _near(schema: Any) -> st.SearchStrategy[Any]:
    """Values that mostly satisfy ``schema``, often just miss it, sometimes are anything."""
    if not isinstance(schema, dict) or schema == {}:
        return _ANY_JSON
    kind = schema.get("type")
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        exact = st.sampled_from(values)
        return _mostly(exact, st.sampled_from([str(v).upper() for v in values] + [None, 1, True]))
    if kind == "string":
        if "pattern" in schema:
            good = st.from_regex(schema["pattern"])
            near = good.map(lambda s: s[:-1]) | good.map(lambda s: s + "\n") | good.map(lambda s: s.upper())
            base = _mostly(good, near)
        elif schema.get("format") == "date":
            base = _mostly(st.dates().map(str), st.sampled_from(["2028-02-30", "2028-2-01", "2028-02-01\n"]))
        else:
            base = st.text(max_size=schema.get("maxLength", 20) + 2)
        lengths = [schema[k] for k in ("minLength", "maxLength") if k in schema]
        edges = st.sampled_from(["é" * n for n in lengths] + ["é" * (n + 1) for n in lengths] + [""])
        return _mostly(base, edges | st.integers(0, 3))
    if kind in ("integer", "number"):
        lo, hi = schema.get("minimum", -(10**9)), schema.get("maximum", 10**9)
        edges = [lo, hi, lo - 1, hi + 1, float(lo), True]
        good = (
            st.integers(int(lo), int(hi))
            if kind == "integer"
            else st.floats(lo, hi) | st.integers(int(lo), int(hi))
        )
        return _mostly(good, st.integers(int(lo) - 2, int(hi) + 2) | st.sampled_from(edges) | st.just("1"))
    if kind == "boolean":
        return _mostly(st.booleans(), st.sampled_from([0, 1, "true", None]))
    if kind == "array":
        item = _near(schema.get("items", {}))
        return _mostly(st.lists(item, max_size=schema.get("maxItems", 3) + 1), st.just({}))
    if kind == "object" or "properties" in schema:
        return _object(schema)
    if isinstance(kind, list):
        return st.one_of([_near({"type": k}) for k in kind])
    return _ANY_JSON


def _object(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    members = st.fixed_dictionaries({}, optional={name: _near(sub) for name, sub in props.items()})
    required = {name: _near(props[name]) for name in schema.get("required", ()) if name in props}
    base = st.fixed_dictionaries(
        required, optional={n: _near(s) for n, s in props.items() if n not in required}
    )
    if isinstance(extra, dict):
        base = st.dictionaries(st.text(max_size=6), _near(extra), max_size=schema.get("maxProperties", 4) + 2)

    @st.composite
    def mutated(draw: st.DrawFn) -> Any:
        doc = draw(_mostly(base, members))
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
            action = draw(st.sampled_from(["drop", "add", "replace"]))
            if action == "drop" and doc:
                doc.pop(draw(st.sampled_from(sorted(doc))))
            elif action == "add":
                doc[draw(st.text(max_size=6) | st.sampled_from(sorted(props) or ["x"]))] = draw(_ANY_JSON)
            elif action == "replace" and doc:
                doc[draw(st.sampled_from(sorted(doc)))] = draw(_ANY_JSON)
        return doc

    return _mostly(mutated(), st.just([]) | st.just(None))


def _core(name: str, version: int) -> dict[str, Any]:
    schema = copy.deepcopy(load_schema(name, version))
    schema.pop("allOf", None)  # the payload dispatch: each payload has its own check
    return schema


SCHEMAS = list_schemas()


def _authority(schema: dict[str, Any]) -> Any:
    return _StrictValidator(schema, registry=schema_registry(), format_checker=_FORMATS)


@pytest.mark.parametrize(("name", "version"), SCHEMAS, ids=[f"{n}.v{v}" for n, v in SCHEMAS])
def test_every_published_schema_has_a_compiled_check(name: str, version: int) -> None:
    assert compile_check(_core(name, version)) is not None


@pytest.mark.parametrize(("name", "version"), SCHEMAS, ids=[f"{n}.v{v}" for n, v in SCHEMAS])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_checks_accept_and_refuse_what_the_schema_does(name: str, version: int, data: Any) -> None:
    schema = _core(name, version)
    doc = data.draw(_near(schema), label="document")
    expected = _authority(schema).is_valid(doc)
    checks = [compile_check(schema), compile_python_check(schema)]
    with contextlib.suppress(_Unsupported, TypeError):  # otherwise checked by the Python predicates
        checks.append(_msgspec_check(schema))
    for check in checks:
        assert check is not None
        assert check(doc) == expected, f"{name}.v{version}: compiled {not expected}, schema {expected}"


@pytest.mark.parametrize(("name", "version"), SCHEMAS, ids=[f"{n}.v{v}" for n, v in SCHEMAS])
def test_the_corpus_holds_valid_and_invalid_documents(name: str, version: int) -> None:
    """Guard against a generator that only produces one side: both answers occur for every schema."""
    schema = _core(name, version)
    authority = _authority(schema)
    budget = settings(  # the first document found will do: shrinking it cost a minute a schema
        max_examples=300, database=None, deadline=None, suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )  # fmt: skip
    assert authority.is_valid(find(_near(schema), authority.is_valid, settings=budget))
    assert not authority.is_valid(find(_near(schema), lambda d: not authority.is_valid(d), settings=budget))


# -- the audit path's hashes, checked in one pass --------------------------------------------------

_HEX_PROOF = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "proof": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "path": {"type": "array", "items": {"type": "string", "pattern": "^[0-9a-f]{8}$"}}
            },
        }
    },
}
_HEX_ITEM = st.from_regex(r"\A[0-9a-f]{8}\Z")


@st.composite
def _edited_hex(draw: st.DrawFn) -> str:
    """A hex item, often with characters changed, inserted or appended: a space, a tab, a newline,
    an uppercase digit, a letter beyond f, a non-ASCII digit or letter (whitespace between two pairs
    of digits is what ``bytes.fromhex`` skips)."""
    text = draw(_HEX_ITEM)
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        odd = draw(st.sampled_from([" ", "  ", "\t", "\n", "\r", "A", "F", "g", "٣", "ß", "Ａ", "0", "a"]))
        at = (
            2 * draw(st.integers(0, len(text) // 2))
            if draw(st.booleans())
            else draw(st.integers(0, len(text)))
        )
        how = draw(st.sampled_from(["replace", "insert", "append"]))
        if how == "append":
            text += odd
        elif how == "insert":
            text = text[:at] + odd + text[at:]
        else:
            text = text[:at] + odd + text[at + len(odd) :]
    return text


@settings(max_examples=400, deadline=None)
@given(st.lists(_edited_hex(), max_size=6))
@example(["ab def01", "2 456789"])  # whitespace bytes.fromhex skips: 14 digits, an even count
@example(["abcdef01", "ABCDEF01"])  # uppercase digits bytes.fromhex reads
@example(["abcdef01", "abcdef01\n"])  # a trailing newline, which the pattern's $ allows
def test_a_list_of_hashes_is_checked_in_one_pass_as_each_item_against_its_pattern(items: list[str]) -> None:
    doc = {"proof": {"path": items}}
    expected = _authority(_HEX_PROOF).is_valid(doc)
    assert _msgspec_check(_HEX_PROOF)(doc) == expected, items
