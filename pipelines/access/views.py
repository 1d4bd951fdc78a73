"""Directories of Parquet rows with the master dataset's columns (the master dataset, the real-time view).

:class:`ParquetRows` reads one vehicle's rows (a :class:`SubjectReader` for
the right of access) and, as an :class:`ErasableStore`, checks on erasure that
every protected value in those rows is sealed: sealed rows need no rewrite
(the master dataset is append only), they become unreadable when the vault
drops the keys.  Plaintext protected data found there (a lifted ``lat``/``lon``
column, an unsealed payload field) stops the erasure with the count of rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds

from pipelines.errors import PccError, PccStateError

from .fields import iter_tokens

_PLAINTEXT_COLUMNS = ("lat", "lon")  # lifted precise_location columns of MASTER_SCHEMA


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
                return table.to_pylist()
            except FileNotFoundError:
                if attempt == 2:
                    raise
        return []

    def erase_vehicle(self, vehicle: str) -> int:
        rows = self.rows_for(vehicle)
        plain = 0
        for row in rows:
            lifted = any(row.get(c) is not None for c in _PLAINTEXT_COLUMNS)
            try:
                payload = row["payload"]
                payload = orjson.loads(payload) if isinstance(payload, str | bytes) else payload
                list(iter_tokens(str(row["event_type"]), int(row["schema_version"]), payload))
                unsealed = False
            except (PccError, ValueError):
                unsealed = True
            plain += lifted or unsealed
        if plain:
            raise PccStateError(
                f"{self.name}: {plain} of {len(rows)} rows of {vehicle} hold protected data in plaintext "
                "(lifted lat/lon or an unsealed payload field); crypto-shredding cannot erase them"
            )
        return len(rows)
