"""Data categories of payload fields, read from the schemas' ``x-pcc-category``.

Access control works per category: the public ones can be sold in shared
views, the protected ones need a grant (and are encrypted per vehicle with
keys from the identity vault).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pipelines.events.registry import load_schema

CATEGORIES: frozenset[str] = frozenset(
    {
        "mileage",
        "maintenance",
        "inspection",
        "accident",
        "region",
        "owner_identity",
        "precise_location",
        "commercial",
    }
)
PUBLIC_CATEGORIES: frozenset[str] = frozenset({"mileage", "maintenance", "inspection", "accident", "region"})
PROTECTED_CATEGORIES: frozenset[str] = frozenset({"owner_identity", "precise_location", "commercial"})

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path_join(path: str, key: str | int) -> str:
    """``$.a`` + ``b`` -> ``$.a.b``; indexes and odd keys use brackets (``$.a[0]``, ``$['x y']``)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENT.match(key):
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def _walk(schema: dict[str, Any], path: str, out: dict[str, str]) -> None:
    for name, sub in schema.get("properties", {}).items():
        sub_path = json_path_join(path, name)
        category = sub.get("x-pcc-category")
        if category is not None:
            out[sub_path] = category
        _walk(sub, sub_path, out)


@cache
def _field_categories(schema_name: str, version: int) -> dict[str, str]:
    out: dict[str, str] = {}
    _walk(load_schema(schema_name, version), "$.payload", out)
    return out


def field_categories(event_type: str, version: int = 1) -> dict[str, str]:
    """``{"$.payload.odometer_km": "mileage", "$.payload.location": "precise_location", ...}``.

    Nested fields (``$.payload.location.lat``) carry their parent's category.
    """
    return dict(_field_categories(event_type, version))


def top_level_categories(event_type: str, version: int = 1) -> dict[str, str]:
    """Category of each top-level payload field by name: ``{"odometer_km": "mileage", ...}``."""
    prefix = "$.payload."
    return {
        path[len(prefix) :]: cat
        for path, cat in _field_categories(event_type, version).items()
        if path.count(".") == 2 and "[" not in path
    }
