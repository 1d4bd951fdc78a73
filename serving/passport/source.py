"""Where a passport's rows come from: the :class:`PassportSource` protocol and its DuckDB reader.

A source answers three questions about the serving views (docs/contracts.md):

* ``history(vehicle)``: the vehicle's ``vehicle_history`` rows (columns of
  ``pipelines.dataset.MASTER_SCHEMA``, plus whatever the batch layer adds,
  e.g. ``batch_flags``), in any order;
* ``fraud(vehicle)``: its ``fraud_scores`` row, or ``None`` before the first
  batch run has scored it;
* ``proof(event_id)``: the ``vehicle_history`` row of one event (the proof
  columns and everything needed to rebuild the envelope), ``None`` if unknown.
  An optional ``path`` member (hex audit path) is used when present.

:class:`DuckDBPassportSource` reads the merged views through any DuckDB
cursor: the serving store's pinned cursor in production
(:meth:`DuckDBPassportSource.from_store`), a plain connection in tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import duckdb

from serving.passport.errors import ServingViewMissingError

Row = dict[str, Any]


@runtime_checkable
class PassportSource(Protocol):
    def history(self, vehicle: str) -> list[Row]: ...

    def fraud(self, vehicle: str) -> Row | None: ...

    def proof(self, event_id: str) -> Row | None: ...


CursorFactory = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


class DuckDBPassportSource:
    """A :class:`PassportSource` over the ``vehicle_history`` and ``fraud_scores`` views of a DuckDB database."""

    def __init__(self, cursors: CursorFactory) -> None:
        self._cursors = cursors

    @classmethod
    def from_connection(cls, con: duckdb.DuckDBPyConnection) -> DuckDBPassportSource:
        """Each lookup on its own cursor of ``con`` (thread-safe use of one connection)."""

        @contextlib.contextmanager
        def cursor() -> Iterator[duckdb.DuckDBPyConnection]:
            cur = con.cursor()
            try:
                yield cur
            finally:
                cur.close()

        return cls(cursor)

    @classmethod
    def from_store(cls, store: Any) -> DuckDBPassportSource:
        """Over the serving store: each lookup pins one batch version (``store.pin()`` yields ``(cursor, version)``)."""

        @contextlib.contextmanager
        def cursor() -> Iterator[duckdb.DuckDBPyConnection]:
            with store.pin() as (cur, _version):
                yield cur

        return cls(cursor)

    def _rows(self, sql: str, params: list[Any], view: str, optional: bool = False) -> list[Row]:
        with self._cursors() as cur:
            try:
                cur.execute(sql, params)
            except duckdb.CatalogException as exc:
                if optional:
                    return []  # fraud_scores exists once a batch version is published
                raise ServingViewMissingError(f"the serving view {view} is not available: {exc}") from None
            names = [d[0] for d in cur.description or []]
            return [dict(zip(names, values, strict=True)) for values in cur.fetchall()]

    def history(self, vehicle: str) -> list[Row]:
        return self._rows(
            "SELECT * FROM vehicle_history WHERE vehicle = ? ORDER BY event_time, source_id, log_index, event_id",
            [vehicle],
            "vehicle_history",
        )

    def fraud(self, vehicle: str) -> Row | None:
        rows = self._rows(
            "SELECT * FROM fraud_scores WHERE vehicle = ? LIMIT 1", [vehicle], "fraud_scores", True
        )
        return rows[0] if rows else None

    def proof(self, event_id: str) -> Row | None:
        rows = self._rows(
            "SELECT * FROM vehicle_history WHERE event_id = ? LIMIT 1", [event_id], "vehicle_history"
        )
        return rows[0] if rows else None


class InMemoryPassportSource:
    """A :class:`PassportSource` over lists of row dicts (unit tests, demos)."""

    def __init__(self, history: list[Row], fraud: list[Row] | None = None) -> None:
        self._history = list(history)
        self._fraud = {r["vehicle"]: r for r in fraud or []}

    def history(self, vehicle: str) -> list[Row]:
        return [r for r in self._history if r["vehicle"] == vehicle]

    def fraud(self, vehicle: str) -> Row | None:
        return self._fraud.get(vehicle)

    def proof(self, event_id: str) -> Row | None:
        return next((r for r in self._history if r["event_id"] == event_id), None)
