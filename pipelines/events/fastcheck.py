"""A compiled yes/no check for the subset of JSON Schema the event schemas use.

``jsonschema`` stays the authority: it reports every problem with its path.
But its generic evaluation costs ~0.2 ms per envelope, too slow for the
producer and the speed layer, so valid documents are first accepted by a
check compiled here from the same schema file; only a document this check
rejects goes through ``jsonschema`` to list its problems (a false refusal
costs time, never correctness: the authority then finds nothing).

The check is a msgspec type built from the schema (``msgspec.convert``
validates a decoded document against it in C, a few µs per envelope); a
schema msgspec cannot express falls back to Python predicates compiled from
the same keywords, and a schema using a keyword neither knows is not compiled
(:func:`compile_check` returns ``None``): ``jsonschema`` alone validates it.
Property tests check that the compiled check and the schema accept and refuse
the same generated documents.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from itertools import count
from typing import Annotated, Any, Literal, Optional, Union

import msgspec

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
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
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


def _compile(schema: Any) -> Check:  # noqa: C901, PLR0912 (a case per JSON Schema keyword)
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


# --- msgspec: the schema as a type, checked in C -----------------------------------------------

_STRUCT_NAMES = count()
_MSGSPEC_KEYS = {
    "type",
    "properties",
    "additionalProperties",
    "required",
    "enum",
    "const",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "items",
}


def _meta(schema: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    return {arg: schema[key] for key, arg in keys.items() if key in schema}


def _constrained(base: Any, meta: dict[str, Any]) -> Any:
    return Annotated[base, msgspec.Meta(**meta)] if meta else base


def _literal(values: list[Any]) -> Any:
    if not values or not all(v is None or type(v) is str for v in values):
        raise _Unsupported("enum/const other than strings and null")
    strings = tuple(v for v in values if v is not None)
    if not strings:
        return type(None)
    lit = Literal.__getitem__(strings)
    return Optional[lit] if None in values else lit  # noqa: UP045 - built at run time


#: Where the document holds a list of hex strings checked in one pass (:class:`_HexLists`), and how long
#: each string is: ``(members leading to the list, length)``.
HexList = tuple[tuple[str, ...], int]
_HEX_PATTERN = re.compile(r"\^\[0-9a-f\]\{([1-9][0-9]?[02468]|[2468])\}\$")


def _hex_items(items: Any) -> int | None:
    """``n`` when an array's items are exactly ``{"type": "string", "pattern": "^[0-9a-f]{n}$"}``, ``n`` even."""
    if not isinstance(items, dict) or items.keys() - _ANNOTATIONS != {"type", "pattern"}:
        return None
    match = _HEX_PATTERN.fullmatch(items["pattern"]) if items["type"] == "string" else None
    return int(match.group(1)) if match else None


def _object_type(
    schema: dict[str, Any], path: tuple[str, ...] | None = None, hex_lists: list[HexList] | None = None
) -> Any:
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    if not props and "required" not in schema:
        if extra is True:
            value: Any = Any
        elif extra is False:
            raise _Unsupported("an object that must be empty")
        else:
            value = _msgspec_type(extra)  # members of any name: no fixed path below
        return _constrained(dict[str, value], _meta(schema, {"maxProperties": "max_length"}))
    if extra is not False or "maxProperties" in schema:
        raise _Unsupported("a struct open to other members")
    required = set(schema.get("required", ()))
    if not required <= props.keys():
        raise _Unsupported("a required member without its schema")
    fields = []
    for i, (name, sub) in enumerate(props.items()):
        default = (
            msgspec.field(name=name) if name in required else msgspec.field(default=msgspec.UNSET, name=name)
        )
        below = None if path is None else (*path, name)
        fields.append((f"f{i}", _msgspec_type(sub, below, hex_lists), default))
    return msgspec.defstruct(f"Schema{next(_STRUCT_NAMES)}", fields, kw_only=True, forbid_unknown_fields=True)


def _msgspec_type(  # noqa: C901, PLR0912 (a case per JSON Schema keyword)
    schema: Any, path: tuple[str, ...] | None = None, hex_lists: list[HexList] | None = None
) -> Any:
    """The msgspec type checking ``schema``.  ``path``: the members leading here from the document's
    root (None inside arrays and open maps); ``hex_lists`` collects the lists of hex strings whose
    pattern is checked after ``convert`` in one pass (:class:`_HexLists`) rather than per item."""
    if schema is True or schema == {}:
        return Any
    if not isinstance(schema, dict):
        raise _Unsupported(repr(schema))
    keys = {k for k in schema if k not in _ANNOTATIONS}
    if keys - _MSGSPEC_KEYS:
        raise _Unsupported(", ".join(sorted(keys - _MSGSPEC_KEYS)))
    kind = schema.get("type")
    if "enum" in schema or "const" in schema:
        if keys - {"enum", "const", "type"} or kind not in (None, "string"):
            raise _Unsupported("enum with other keywords")
        return _literal(list(schema["enum"]) if "enum" in schema else [schema["const"]])
    if kind == "string":
        if "format" in schema:
            if schema["format"] != "date" or schema.get("pattern", _DATE.pattern) != _DATE.pattern:
                raise _Unsupported("format")
            if keys - {"type", "format", "pattern"}:
                raise _Unsupported("format with other keywords")
            return date  # RFC 3339 full-date, a real calendar day
        return _constrained(
            str, _meta(schema, {"pattern": "pattern", "minLength": "min_length", "maxLength": "max_length"})
        )
    if kind in ("integer", "number"):
        meta = _meta(schema, {"minimum": "ge", "maximum": "le"})
        if keys - {"type", "minimum", "maximum"}:
            raise _Unsupported("number keywords")
        # msgspec's float takes a JSON integer too (and refuses booleans), as "number" does
        return _constrained(int if kind == "integer" else float, meta)
    if kind == "boolean" and keys == {"type"}:
        return bool
    if kind == "null" and keys == {"type"}:
        return type(None)
    if kind == "array":
        if keys - {"type", "items", "minItems", "maxItems"}:
            raise _Unsupported("array keywords")
        bounds = _meta(schema, {"minItems": "min_length", "maxItems": "max_length"})
        n = _hex_items(schema.get("items"))
        if n is not None and path is not None and hex_lists is not None:
            # the length here (a trailing newline allowed, as the pattern's ``$`` does), the pattern after
            hex_lists.append((path, n))
            return _constrained(list[Annotated[str, msgspec.Meta(min_length=n, max_length=n + 1)]], bounds)
        item = _msgspec_type(schema.get("items", True))
        return _constrained(list[item], bounds)  # type: ignore[valid-type]
    if kind == "object":
        return _object_type(schema, path, hex_lists)
    if isinstance(kind, list) and keys == {"type"}:
        return Union.__getitem__(tuple(_msgspec_type({"type": k}) for k in kind))
    raise _Unsupported(f"type {kind!r} with {sorted(keys)}")


class _HexLists:
    """The pattern ``^[0-9a-f]{n}$`` of every item of some lists, in one pass per list.

    A Merkle audit path holds a dozen 64-digit hashes: matching each against the
    pattern cost 0.35 µs an item, more than the rest of the envelope's check.  The
    items (already ``n`` or ``n + 1`` characters long) are joined: when all are
    ``n`` long, the list matches exactly when the joined text is lowercase and
    ``bytes.fromhex`` reads it as ``n / 2`` bytes an item (anything but a hex digit,
    whitespace aside, is an error there; whitespace or an uppercase digit
    changes the length or the case).  A list with an ``n + 1``-character item
    (a trailing newline, which ``$`` allows) is matched item by item.
    """

    __slots__ = ("_lists", "_search")

    def __init__(self, lists: list[HexList]) -> None:
        self._lists = lists
        self._search = {n: re.compile(f"^[0-9a-f]{{{n}}}$").search for _, n in lists}

    def __call__(self, doc: Any) -> bool:
        for path, n in self._lists:
            items: Any = doc
            for name in path:
                items = items.get(name) if type(items) is dict else None
            if not items:  # absent (optional) or empty
                continue
            joined = "".join(items)
            if len(joined) == n * len(items):
                try:
                    if joined == joined.lower() and len(bytes.fromhex(joined)) * 2 == len(joined):
                        continue
                except ValueError:
                    pass
                return False
            search = self._search[n]
            if not all(search(item) for item in items):
                return False
        return True


def _msgspec_check(schema: dict[str, Any]) -> Check:
    hex_lists: list[HexList] = []
    target = _msgspec_type(schema, (), hex_lists)
    convert, invalid = msgspec.convert, msgspec.ValidationError
    lists = _HexLists(hex_lists) if hex_lists else None

    def check(x: Any) -> bool:
        try:
            convert(x, target)
        except invalid:
            return False
        return lists is None or lists(x)

    return check


def compile_check(schema: dict[str, Any]) -> Check | None:
    """A predicate equivalent to validating against ``schema``, or ``None`` if it uses other keywords."""
    try:
        return _msgspec_check(schema)
    except (_Unsupported, TypeError):
        pass
    return compile_python_check(schema)


def compile_python_check(schema: dict[str, Any]) -> Check | None:
    """The same predicate as Python closures (for what msgspec cannot express), or ``None``."""
    try:
        return _compile(schema)
    except _Unsupported:
        return None
