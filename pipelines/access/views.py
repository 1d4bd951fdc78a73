"""Directories of Parquet rows with the master dataset's columns (the master dataset, the real-time view).

:class:`ParquetRows` reads one vehicle's rows (a :class:`SubjectReader` for
the right of access) and, as an :class:`ErasableStore`, checks on erasure that
every protected value in those rows is sealed: sealed rows need no rewrite
(the master dataset is append only), they become unreadable when the vault
drops the keys.  Plaintext protected data found there (a ``lat``/``lon``
column more precise than the public region, an unsealed payload field) stops
the erasure with the count of rows.  :func:`check_sealed` is the same check
for rows read from anywhere else (the serving layer's engine).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds

from pipelines.dataset import region
from pipelines.errors import PccError, PccStateError

from .fields import iter_tokens

_REGION_COLUMNS = ("lat", "lon")  # MASTER_SCHEMA's public region: never more precise than region()


def _precise(value: Any) -> bool:
    return value is not None and float(value) != region(value)


def _unsealed(row: Mapping[str, Any]) -> bool:
    try:
        payload = row["payload"]
        payload = orjson.loads(payload) if isinstance(payload, str | bytes) else payload
        list(iter_tokens(str(row["event_type"]), int(row["schema_version"]), payload))
    except (PccError, ValueError, KeyError, TypeError):
        return True
    return False


def check_sealed(rows: Iterable[Mapping[str, Any]], store: str, vehicle: str) -> int:
    """How many rows; :class:`PccStateError` when one holds protected data in plaintext."""
    seen = plain = 0
    for row in rows:
        seen += 1
        plain += any(_precise(row.get(c)) for c in _REGION_COLUMNS) or _unsealed(row)
    if plain:
        raise PccStateError(
            f"{store}: {plain} of {seen} rows of {vehicle} hold protected data in plaintext "
            "(a lat/lon finer than the region or an unsealed payload field); "
            "crypto-shredding cannot erase them"
        )
    return seen


class ParquetRows:
    """Rows of one Parquet directory tree (``**/*.parquet``; temporary files are skipped)."""

    def __init__(self, root: str | os.PathLike[str], name: str) -> None:
        self.root = Path(root)
        self.name = name

    def rows_for(self, vehicle: str) -> list[dict[str, Any]]:
        for attempt in range(3):  # a real-time segment may vanish between listing and reading
            files = sorted(str(p) for p in self.root.glob("**/*.parquet")) if self.root.is_dir() else []
            if not files:
                return []
            try:
                table = ds.dataset(files, format="parquet").to_table(filter=ds.field("vehicle") == vehicle)
                rows: list[dict[str, Any]] = table.to_pylist()
                return rows
            except FileNotFoundError:
                if attempt == 2:
                    raise
        return []

    def erase_vehicle(self, vehicle: str) -> int:
        return check_sealed(self.rows_for(vehicle), self.name, vehicle)
