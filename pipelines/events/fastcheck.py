"""A compiled yes/no check for the subset of JSON Schema the event schemas use.

``jsonschema`` stays the authority: it reports every problem with its path.
But its generic evaluation costs ~0.2 ms per envelope, too slow for the
producer and the speed layer, so valid documents are first accepted by a
predicate compiled here from the same schema file; only a document this check
rejects goes through ``jsonschema`` to list its problems.  A schema using a
keyword this module does not know is not compiled (:func:`compile_check`
returns ``None``) and ``jsonschema`` alone validates it.  Tests check that the
two agree on valid and mutated documents.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from typing import Any

Check = Callable[[Any], bool]

_ANNOTATIONS = {
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
    "x-pcc-category",
    "x-pcc-value",
}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)
_TYPES: dict[str, Check] = {
    "integer": lambda x: type(x) is int,
    "number": lambda x: type(x) is int or type(x) is float,
    "string": lambda x: type(x) is str,
    "boolean": lambda x: type(x) is bool,
    "object": lambda x: type(x) is dict,
    "array": lambda x: type(x) is list,
    "null": lambda x: x is None,
}


class _Unsupported(Exception):
    pass


def _is_number(x: Any) -> bool:
    return type(x) is int or type(x) is float


def _scalar_in(values: list[Any]) -> Check:
    if not all(v is None or type(v) in (str, bool) for v in values):
        raise _Unsupported("enum/const with numbers or containers")
    strings = frozenset(v for v in values if type(v) is str)
    others = [v for v in values if type(v) is not str]
    return lambda x: (type(x) is str and x in strings) or any(x is v for v in others)


def _is_date(x: Any) -> bool:
    if type(x) is not str:
        return True
    if not _DATE.match(x):
        return False
    try:
        date.fromisoformat(x)
    except ValueError:
        return False
    return True


_PYTYPE: dict[str, type] = {"string": str, "object": dict, "array": list}


def _guard(kind: str | None, wanted: str, check: Check) -> Check:
    """``check`` applies to one JSON type only; other types pass (skipped when the type is known)."""
    if kind == wanted:
        return check
    pytype = _PYTYPE[wanted]
    return lambda x: type(x) is not pytype or check(x)


def _number_guard(kind: str | None, check: Check) -> Check:
    if kind in ("integer", "number"):
        return check
    return lambda x: not _is_number(x) or check(x)


def _object_check(schema: dict[str, Any]) -> Check:
    props = {name: _compile(sub) for name, sub in schema.get("properties", {}).items()}
    if "patternProperties" in schema:
        raise _Unsupported("patternProperties")
    extra = _compile(schema.get("additionalProperties", True))
    required = tuple(schema.get("required", ()))

    def check(x: dict[str, Any]) -> bool:
        for name in required:
            if name not in x:
                return False
        for k, v in x.items():
            sub = props.get(k, extra)
            if not sub(v):
                return False
        return True

    return check


def _at_least(v: float) -> Check:
    return lambda x: bool(x >= v)


def _at_most(v: float) -> Check:
    return lambda x: bool(x <= v)


def _len_at_least(v: int) -> Check:
    return lambda x: len(x) >= v


def _len_at_most(v: int) -> Check:
    return lambda x: len(x) <= v


def _matches(pattern: str) -> Check:
    search = re.compile(pattern).search
    return lambda x: search(x) is not None


def _every(item: Check) -> Check:
    return lambda x: all(map(item, x))


def _compile(schema: Any) -> Check:
    if schema is True:
        return lambda x: True
    if schema is False:
        return lambda x: False
    if not isinstance(schema, dict):
        raise _Unsupported(repr(schema))
    names = schema.get("type")
    kind = names if isinstance(names, str) else None
    checks: list[Check] = []
    if kind is not None:
        checks.append(_TYPES[kind])
    elif names is not None:
        tests = [_TYPES[n] for n in names]
        checks.append(lambda x: any(t(x) for t in tests))
    if {"properties", "additionalProperties", "required"} & schema.keys():
        checks.append(_guard(kind, "object", _object_check(schema)))
    for key, value in schema.items():
        if key in _ANNOTATIONS or key in ("type", "properties", "additionalProperties", "required"):
            continue
        if key == "enum":
            checks.append(_scalar_in(list(value)))
        elif key == "const":
            checks.append(_scalar_in([value]))
        elif key == "pattern":
            checks.append(_guard(kind, "string", _matches(value)))
        elif key == "format":
            if value != "date":
                raise _Unsupported(f"format {value}")
            checks.append(_is_date)
        elif key == "minimum":
            checks.append(_number_guard(kind, _at_least(value)))
        elif key == "maximum":
            checks.append(_number_guard(kind, _at_most(value)))
        elif key == "minLength":
            checks.append(_guard(kind, "string", _len_at_least(value)))
        elif key == "maxLength":
            checks.append(_guard(kind, "string", _len_at_most(value)))
        elif key == "minItems":
            checks.append(_guard(kind, "array", _len_at_least(value)))
        elif key == "maxItems":
            checks.append(_guard(kind, "array", _len_at_most(value)))
        elif key == "maxProperties":
            checks.append(_guard(kind, "object", _len_at_most(value)))
        elif key == "items":
            item = _compile(value)
            checks.append(_guard(kind, "array", _every(item)))
        else:
            raise _Unsupported(key)
    return _all(checks)


def _all(checks: list[Check]) -> Check:
    if not checks:
        return lambda x: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks
        return lambda x: a(x) and b(x)
    if len(checks) == 3:
        a, b, c = checks
        return lambda x: a(x) and b(x) and c(x)

    def check(x: Any) -> bool:
        for c in checks:  # noqa: SIM110 - a plain loop is faster than all() over a generator
            if not c(x):
                return False
        return True

    return check


def compile_check(schema: dict[str, Any]) -> Check | None:
    """A predicate equivalent to validating against ``schema``, or ``None`` if it uses other keywords."""
    try:
        return _compile(schema)
    except _Unsupported:
        return None
