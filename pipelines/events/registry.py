"""The versioned JSON Schemas shipped in ``pipelines/events/schemas``, loadable by name.

A schema's name is an event type (its payload schema), ``envelope`` (the wire
envelope), ``producer_input`` (the envelope before pseudonymisation) or
``ownership_change_input`` (that payload with owner identity objects).  Files
are ``<name>.v<version>.json``; every ``$id`` is ``urn:pcc:schema:<name>.v<version>``.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from importlib.resources import files
from typing import Any

from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from pipelines.errors import PccNotFoundError

SCHEMA_URN = "urn:pcc:schema:"
_FILE = re.compile(r"^(?P<name>[a-z0-9_]+)\.v(?P<version>[1-9][0-9]*)\.json$")


@cache
def _index() -> dict[tuple[str, int], str]:
    out: dict[tuple[str, int], str] = {}
    for entry in files("pipelines.events.schemas").iterdir():
        m = _FILE.match(entry.name)
        if m:
            out[(m["name"], int(m["version"]))] = entry.read_text(encoding="utf-8")
    return out


@cache
def _parsed(name: str, version: int) -> dict[str, Any]:
    try:
        text = _index()[(name, version)]
    except KeyError:
        known = ", ".join(f"{n}.v{v}" for n, v in list_schemas())
        raise PccNotFoundError(f"no schema {name}.v{version} (known: {known})") from None
    schema: dict[str, Any] = json.loads(text)
    return schema


def list_schemas() -> list[tuple[str, int]]:
    """Every ``(name, version)`` shipped, sorted."""
    return sorted(_index())


def schema_versions(name: str) -> list[int]:
    """The versions shipped for one schema name (empty when the name is unknown)."""
    return sorted(v for n, v in _index() if n == name)


def latest_version(name: str) -> int:
    versions = schema_versions(name)
    if not versions:
        raise PccNotFoundError(
            f"no schema named {name!r} (known: {', '.join(sorted({n for n, _ in _index()}))})"
        )
    return versions[-1]


def load_schema(name: str, version: int | None = None) -> dict[str, Any]:
    """A copy of the schema ``<name>.v<version>.json`` (latest version when omitted)."""
    return copy.deepcopy(_parsed(name, latest_version(name) if version is None else version))


def schema_text(name: str, version: int | None = None) -> str:
    """The schema file exactly as shipped (what producers fetch)."""
    v = latest_version(name) if version is None else version
    _parsed(name, v)  # raises PccNotFoundError for an unknown one
    return _index()[(name, v)]


@cache
def schema_registry() -> Registry:
    """A ``referencing`` registry holding every shipped schema under its ``$id``."""
    resources = [
        (_parsed(n, v)["$id"], Resource.from_contents(_parsed(n, v), default_specification=DRAFT202012))
        for n, v in list_schemas()
    ]
    return Registry().with_resources(resources)
