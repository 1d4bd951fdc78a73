"""Strict parsing of wire bytes into a JSON object.

Stricter than ``json.loads`` so that every accepted message has exactly one
meaning and one canonical hash (RFC 8785):

- at most ``max_bytes`` bytes, valid UTF-8 (no BOM), a JSON object at the top;
- no duplicate key in any object;
- numbers in canonical form only: no ``1.0`` (write ``1``), no exponent
  (``1e3``), no ``-0``, no trailing zeros (``45.10``), no ``NaN``/``Infinity``,
  no integer beyond the interoperable range ±(2^53 - 1) (RFC 7493);
- no lone UTF-16 surrogate escapes (``"\\ud800"``), which cannot be hashed.

Three paths, each taken only when the one before cannot decide:

1. **As sent by orjson** (the producer SDK, the ingest bridge): msgspec
   parses the message in C, handing every float literal to the strict float
   rule, and orjson writes the value back; when that gives the very same bytes
   (and no integer beyond ±(2^53 - 1)), the message is compact, free of
   duplicate keys and canonical in every number, so its value is the one the
   strict path would give (a generated test holds the two to the same answer
   on any document, hostile edits included);
2. ``json.loads`` with small hooks that refuse what the rules forbid;
3. only when something is wrong, a second pass walks the document to name the
   JSON path of every problem.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import orjson
import rfc8785

from pipelines.errors import PccValidationError
from pipelines.events.categories import json_path_join

MAX_SAFE_INTEGER = 2**53 - 1
DEFAULT_MAX_BYTES = 16 * 1024
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _Reject(Exception):
    """Raised inside the fast path; the slow path finds where and why."""


def _float_problem(literal: str) -> str | None:
    if "e" in literal or "E" in literal:
        return f"number {literal} has an exponent; write it out in plain decimal"
    value = float(literal)
    if value.is_integer():
        return f"number {literal} is an integer written as a decimal; write {int(value)}"
    if repr(value) == literal:
        return None
    canonical = rfc8785.dumps(value).decode()
    if canonical == literal:
        return None
    return f"number {literal} is not in canonical form; write {canonical}"


def _int_problem(literal: str) -> str | None:
    if literal == "-0":
        return "number -0 is not canonical; write 0"
    if len(literal) >= 16 and abs(int(literal)) > MAX_SAFE_INTEGER:
        return f"integer {literal} is beyond ±(2^53 - 1), the range every JSON reader handles exactly"
    return None


def _fast_float(literal: str) -> float:
    if "e" in literal or "E" in literal or literal.endswith(".0"):
        raise _Reject
    value = float(literal)
    if repr(value) != literal and _float_problem(literal) is not None:
        raise _Reject
    return value


def _fast_int(literal: str) -> int:
    if literal == "-0" or (len(literal) >= 16 and abs(int(literal)) > MAX_SAFE_INTEGER):
        raise _Reject
    return int(literal)


def _fast_constant(literal: str) -> Any:
    raise _Reject


def _fast_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Reject
    return obj


# --- slow path: keep everything, then walk with paths -----------------------------------------


class _Num(str):
    """A number literal kept as text."""


class _Const(str):
    """NaN, Infinity or -Infinity."""


class _Pairs(list[tuple[str, Any]]):
    """An object kept as its key/value pairs, duplicates included."""


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _walk(node: Any, path: str, problems: list[str]) -> None:
    if isinstance(node, _Pairs):
        seen: set[str] = set()
        for key, value in node:
            child = json_path_join(path, key)
            if key in seen:
                problems.append(f"{child}: duplicate key {key!r} in the same object")
            seen.add(key)
            if _has_lone_surrogate(key):
                problems.append(f"{path}: a key contains a lone UTF-16 surrogate escape")
            _walk(value, child, problems)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _walk(value, json_path_join(path, i), problems)
    elif isinstance(node, _Const):
        problems.append(f"{path}: {node} is not a JSON number")
    elif isinstance(node, _Num):
        is_float = any(c in node for c in ".eE")
        message = _float_problem(node) if is_float else _int_problem(node)
        if message:
            problems.append(f"{path}: {message}")
    elif isinstance(node, str) and _has_lone_surrogate(node):
        problems.append(f"{path}: string contains a lone UTF-16 surrogate escape")


def _syntax_problem(exc: json.JSONDecodeError) -> str:
    return f"$: not valid JSON at line {exc.lineno} column {exc.colno} (char {exc.pos}): {exc.msg}"


def _locate(text: str) -> list[str]:
    try:
        tree = json.loads(
            text,
            object_pairs_hook=_Pairs,
            parse_float=_Num,
            parse_int=_Num,
            parse_constant=_Const,
        )
        problems: list[str] = []
        _walk(tree, "$", problems)
    except json.JSONDecodeError as exc:
        return [_syntax_problem(exc)]
    except RecursionError:
        return ["$: nested too deeply"]
    return problems


def _fail(problems: list[str]) -> PccValidationError:
    return PccValidationError("malformed event", problems)


#: msgspec's decoder hands each float literal to the strict rule (``_fast_float``, below)
_DECODER = msgspec.json.Decoder(float_hook=_fast_float)


def _as_sent(data: bytes) -> dict[str, Any] | None:
    """Path 1: the object when ``data`` is exactly what orjson writes of it, else None (decide strictly).

    msgspec parses in C and passes every float literal through the strict
    float rule; writing the value back with orjson must give the same bytes
    (so no duplicate key, no space, every integer written as it must be) and
    refuses integers beyond ±(2^53 - 1) and lone surrogates.
    """
    try:
        value = _DECODER.decode(data)
        again = orjson.dumps(value, option=orjson.OPT_STRICT_INTEGER)
    except Exception:  # any doubt: the strict path decides and names the problem
        return None
    if type(value) is not dict or again != data:
        return None
    return value


def parse_event(raw: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Parse one wire message strictly into a dict, or raise :class:`PccValidationError`.

    The error's ``problems`` name the JSON path (or the byte/character position
    for syntax and encoding errors) of everything that is wrong.
    """
    size = len(raw)
    if size > max_bytes:
        raise _fail([f"$: message is {size} bytes, more than the limit of {max_bytes}"])
    data = bytes(raw)
    if data.startswith(b"\xef\xbb\xbf"):
        raise _fail(["$: message starts with a UTF-8 byte order mark"])
    fast = _as_sent(data)
    if fast is not None:
        return fast
    return _parse_strictly(data)


def _parse_strictly(data: bytes) -> dict[str, Any]:
    """Paths 2 and 3: the strict parse of any message (the authority the fast path must agree with)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail([f"$: invalid UTF-8 at byte {exc.start} ({exc.reason})"]) from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_fast_object,
            parse_float=_fast_float,
            parse_int=_fast_int,
            parse_constant=_fast_constant,
        )
    except _Reject:
        raise _fail(_locate(text) or ["$: non-canonical JSON"]) from None
    except json.JSONDecodeError as exc:
        raise _fail([_syntax_problem(exc)]) from None
    except RecursionError:
        raise _fail(["$: nested too deeply"]) from None
    if _SURROGATE_ESCAPE.search(data):
        problems = _locate(text)
        if problems:
            raise _fail(problems)
    if not isinstance(value, dict):
        raise _fail(
            [f"$: expected a JSON object, got {type(value).__name__ if value is not None else 'null'}"]
        )
    return value
