"""Query shapes: the parse, sandbox check and metering rewrite of a query, done once per shape.

Consumers send the same query with different values (one vehicle's history,
``vehicle = 'v-…'``).  The SQL is split into a *template* (each string literal
replaced by a sentinel) and its literal values; the template is the cache key.
On a miss the real query is checked by the sandbox as always, then the template
is parsed and accepted as a shape only if

* its syntax tree is the real query's tree with nothing changed but those
  string constants (so the sandbox's decision, which never looks at a constant's
  value, holds for every value), and
* each sentinel appears in it only as a string constant (never as a table,
  column, alias or function name).

The metering rewrite is rendered once from the template; a hit only puts the
literals back, each re-quoted (``'`` doubled).  The literals are found by
DuckDB's tokenizer; queries with comments or other kinds of string constants
(``E'…'``, ``X'…'``, ``$$…$$``) are simply not cached: they take the full path
every time.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import duckdb
from cachetools import LRUCache

_TOKEN_PREFIX = "__pcc_lit_"
_TOKEN = _TOKEN_PREFIX + secrets.token_hex(6)
_SENTINEL = re.compile(rf"'{_TOKEN}_(\d+)__'")
_STRING, _COMMENT = duckdb.token_type.string_const, duckdb.token_type.comment
_V = TypeVar("_V")


def sentinel(i: int) -> str:
    return f"{_TOKEN}_{i}__"


def split_literals(sql: str) -> tuple[str, list[str]] | None:
    """``sql`` with each string literal replaced by a sentinel, and the literals' values.

    The literals are the string constants DuckDB's own tokenizer finds
    (``duckdb.tokenize``); only plain ``'…'`` strings are split out.  None (the
    query is then not cached) for a comment, any other kind of string constant
    (``E'…'``, ``X'…'``, ``$$…$$``) or text the tokenizer cannot read.
    """
    if _TOKEN_PREFIX in sql:
        return None
    try:
        raw = sql.encode("utf-8")  # the tokenizer's positions are byte offsets
        tokens = duckdb.tokenize(sql)
    except (UnicodeError, duckdb.Error):
        return None
    out: list[bytes] = []
    values: list[str] = []
    start = 0
    ends = [position for position, _ in tokens[1:]] + [len(raw)]
    for (position, kind), end in zip(tokens, ends, strict=True):
        if kind == _COMMENT:
            return None
        if kind != _STRING:
            continue
        text = raw[position:end].rstrip()
        inner = text[1:-1]
        if len(text) < 2 or text[:1] != b"'" or text[-1:] != b"'" or b"'" in inner.replace(b"''", b""):
            return None
        out.append(raw[start:position])
        out.append(f"'{sentinel(len(values))}'".encode())
        values.append(inner.replace(b"''", b"'").decode("utf-8"))
        start = position + len(text)
    out.append(raw[start:])
    return b"".join(out).decode("utf-8"), values


def fill(template: str, values: list[str]) -> str:
    """A rendered template with each sentinel replaced by its value, quoted."""
    return _SENTINEL.sub(lambda m: "'" + values[int(m.group(1))].replace("'", "''") + "'", template)


def renders_cleanly(template: str, count: int) -> bool:
    """Every sentinel in a rendered template is a whole quoted string constant."""
    return template.count(_TOKEN) == len(_SENTINEL.findall(template)) and all(
        int(i) < count for i in _SENTINEL.findall(template)
    )


def same_tree(real: Any, template: Any, values: list[str]) -> bool:
    """True if ``template`` is ``real`` with string constant ``i`` replaced by sentinel ``i``.

    Source positions are ignored; a sentinel anywhere but as a string constant fails.
    """
    if isinstance(real, dict) and isinstance(template, dict):
        if real.keys() != template.keys():
            return False
        lit = template.get("literal")
        if template.get("class") == "CONSTANT" and isinstance(lit, dict) and _TOKEN in str(lit.get("text")):
            m = _SENTINEL.fullmatch(f"'{lit.get('text')}'")
            real_lit = real.get("literal")
            return (
                m is not None
                and lit.get("kind") == "STRING"
                and isinstance(real_lit, dict)
                and real_lit.get("kind") == "STRING"
                and int(m.group(1)) < len(values)
                and real_lit.get("text") == values[int(m.group(1))]
                and all(
                    k.startswith("query_location") or same_tree(real[k], template[k], values)
                    for k in real
                    if k != "literal"
                )
            )
        return all(k.startswith("query_location") or same_tree(real[k], template[k], values) for k in real)
    if isinstance(real, list) and isinstance(template, list):
        return len(real) == len(template) and all(
            same_tree(a, b, values) for a, b in zip(real, template, strict=True)
        )
    if isinstance(template, str) and _TOKEN in template:
        return False
    return bool(real == template)


class ShapeCache(Generic[_V]):
    """A bounded, thread-safe LRU of computed shapes (a cachetools LRU behind a lock)."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._items: LRUCache[Hashable, _V] = LRUCache(maxsize=max(size, 1))
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, make: Callable[[], _V]) -> _V:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self.hits += 1
                return found
            self.misses += 1
        value = make()
        self.put(key, value)
        return value

    def peek(self, key: Hashable) -> _V | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: Hashable, value: _V) -> None:
        if self.size > 0:
            with self._lock:
                self._items[key] = value

    def __len__(self) -> int:
        return len(self._items)
