"""Merged serving views in embedded DuckDB: published batch version + real-time tail.

Layout read (docs/contracts.md): ``<data_dir>/batch/CURRENT.json`` names the
published version, its views and its watermark; ``<data_dir>/realtime/*.parquet``
are the speed layer's segments.

How a view is served:

* Each published batch version is loaded once into its own DuckDB file
  ``<data_dir>/serving/versions/<version>.duckdb`` in the batch layer's order
  (sorted by vehicle), so one vehicle's history is a zone-map lookup of one
  row group; then ATTACHed ``READ_ONLY``.
* Real-time segments are loaded as they land into the in-memory table ``rt``
  (primary key ``event_id``: a replayed event is kept once).  A row already in
  the batch version is dropped on load, and when a new version is published the
  rows it now covers are deleted from ``rt`` *in the same transaction* that
  repoints the views.
* ``vehicle_history`` (and ``mileage_timeline``) = batch rows ``UNION ALL`` the
  ``rt`` rows, so across the boundary no event is missing and none is counted
  twice; ``fraud_scores`` and ``source_reputation`` are the batch version's.
* Each consumer query runs in a ``READ ONLY`` transaction started under the
  store's lock (:meth:`ServingStore.pin`): it sees one version and one ``rt``
  state for its whole life, however many versions are published meanwhile.  An
  old version is detached only when no pinned query uses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from pipelines import layout
from pipelines.dataset import MASTER_COLUMNS, MASTER_SCHEMA
from pipelines.errors import PccValueError
from pipelines.files import atomic_write, durable_replace
from serving.config import ServingConfig
from serving.engine.sandbox import engine_settings
from serving.errors import ViewNotFoundError

#: The serving views in the order the catalog lists them.
SERVING_VIEWS: tuple[str, ...] = ("vehicle_history", "mileage_timeline", "fraud_scores", "source_reputation")
#: Views merged with the real-time tail (their rows are events).
MERGED_VIEWS = ("vehicle_history", "mileage_timeline")
_MILEAGE_DEFAULT = ("event_id", "vehicle", "event_time", "odometer_km", "source_id", "quality")
_DUCK_TYPES = {
    "string": "VARCHAR",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "double": "DOUBLE",
    "timestamp[ms, tz=UTC]": "TIMESTAMP WITH TIME ZONE",
    "list<item: string>": "VARCHAR[]",
}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def rt_table_ddl() -> str:
    cols = [f"{_quote(f.name)} {_DUCK_TYPES[str(f.type)]}" for f in MASTER_SCHEMA]
    return f"CREATE TABLE rt ({', '.join(cols)}, PRIMARY KEY (event_id))"


@dataclass(frozen=True)
class BatchManifest:
    """The published batch version as serving reads it: :class:`pipelines.layout.BatchManifest`
    with the views' directories resolved and the watermark's processed time."""

    version: str
    watermark: str  # processed_time, RFC 3339
    views: dict[str, Path]
    doc: layout.BatchManifest

    @classmethod
    def read(cls, batch_dir: Path) -> BatchManifest | None:
        try:
            doc = layout.BatchManifest.load(layout.current_file(batch_dir))
        except PccValueError as exc:
            raise ViewNotFoundError(str(exc)) from None
        if doc is None:
            return None
        return cls(doc.version, str(doc.watermark.processed_time), doc.view_dirs(batch_dir), doc)


class StoreBusy(Exception):
    """The engine is loading new data and the caller asked not to wait (:meth:`ServingStore.pin`)."""


@dataclass
class _Version:
    manifest: BatchManifest
    alias: str
    readers: int = 0


#: The key each batch view is sorted by (docs/batch.md: range-partitioned on it, sorted within files).
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "vehicle_history": ("vehicle", "seq", "event_time"),
    "mileage_timeline": ("vehicle", "seq", "event_time"),
    "fraud_scores": ("vehicle",),
    "source_reputation": ("source_id",),
}


def _sorted_on(con: duckdb.DuckDBPyConnection, table: str, key: str) -> bool:
    """True if ``table`` holds ``key`` in ascending order (one pass, well under a second per 10M rows)."""
    bad = con.execute(
        f"SELECT count(*) FILTER (WHERE nxt < k) FROM "
        f"(SELECT {_quote(key)} AS k, lead({_quote(key)}) OVER () AS nxt FROM {table})"
    ).fetchall()[0][0]
    return int(bad) == 0


def build_version_store(manifest: BatchManifest, target: Path) -> Path:
    """Load a batch version's Parquet views into one DuckDB file (idempotent).

    The batch layer writes each view range-partitioned and sorted on its key,
    so the files are read in name order without sorting (about 25 s for 10M
    events on 2 cores) and DuckDB's per-row-group min/max of the key make one
    vehicle's history a scan of one or two row groups.  A view found out of
    order (another writer) is sorted once here.
    """
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        con.execute("SET preserve_insertion_order = true")
        for view, directory in manifest.views.items():
            if view not in SERVING_VIEWS:
                continue
            if not directory.exists():
                raise ViewNotFoundError(
                    f"batch version {manifest.version}: view {view} missing at {directory}"
                )
            files = sorted(str(f) for f in directory.rglob("*.parquet") if not f.name.startswith((".", "_")))
            if not files:
                raise ViewNotFoundError(f"batch version {manifest.version}: view {view} has no Parquet files")
            listing = "[" + ", ".join(_literal(f) for f in files) + "]"
            source = f"read_parquet({listing}, union_by_name = true)"
            con.execute(f"CREATE TABLE {_quote(view)} AS SELECT * FROM {source}")
            cols = {r[0] for r in con.execute(f"DESCRIBE {_quote(view)}").fetchall()}
            order = [c for c in SORT_KEYS.get(view, ()) if c in cols]
            if order and not _sorted_on(con, _quote(view), order[0]):
                con.execute(
                    f"CREATE OR REPLACE TABLE {_quote(view)} AS SELECT * FROM {_quote(view)} "
                    f"ORDER BY {', '.join(_quote(c) for c in order)}"
                )
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return durable_replace(tmp, target)


class ServingStore:
    """The query engine: one locked-down DuckDB database holding the merged views."""

    def __init__(self, config: ServingConfig) -> None:
        self.config = config
        for d in (config.realtime_dir, config.batch_dir, config.state_dir / "versions"):
            d.mkdir(parents=True, exist_ok=True)
        self._db = duckdb.connect(":memory:")
        allowed = [str(config.realtime_dir) + "/", str(config.state_dir / "versions") + "/"]
        spill = str(config.state_dir / "spill")
        for statement in engine_settings(config.memory_limit, config.threads, allowed, spill):
            self._db.execute(statement)
        self._db.execute(rt_table_ddl())
        self._lock = threading.RLock()
        #: guards each version's reader count (taken briefly, never while loading)
        self._readers_lock = threading.Lock()
        self._loaded: set[str] = set()
        self._current: _Version | None = None
        self._retired: list[_Version] = []
        self._columns: dict[str, list[tuple[str, str]]] = {}
        #: changes whenever the views are recreated (cached query shapes are keyed by it)
        self.epoch = 0
        #: changes with every commit that changes what the views hold (a new version, new segments)
        self.generation = 0
        self._pinned = threading.local()
        self._create_views()

    # -- reading -------------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        return self._current.manifest.version if self._current else None

    @property
    def watermark(self) -> str | None:
        return self._current.manifest.watermark if self._current else None

    def columns(self) -> dict[str, list[tuple[str, str]]]:
        """Each serving view's columns as (name, DuckDB type)."""
        return dict(self._columns)

    def base_tables(self) -> dict[str, frozenset[str]]:
        """Each table the serving views read, as the engine's plans name it, and the views behind it."""
        return dict(self._tables)

    @contextlib.contextmanager
    def pin(self, wait: bool = True) -> Iterator[tuple[duckdb.DuckDBPyConnection, str | None]]:
        """A cursor inside a READ ONLY transaction that sees one version and one real-time state.

        ``wait=False``: :class:`StoreBusy` at once, instead of waiting, while a new version or
        new real-time segments are being loaded (the event loop must not wait for a load).
        """
        if not self._lock.acquire(blocking=wait):
            raise StoreBusy("the engine is loading new data")
        cur = self._db.cursor()
        try:
            pinned = self._current
            if pinned:
                with self._readers_lock:
                    pinned.readers += 1
            cur.execute("BEGIN TRANSACTION READ ONLY")
            # touching a table of each database starts its transaction now: the snapshot is taken under the lock
            cur.execute(self._touch).fetchall()
            self._pinned.generation = self.generation
        except BaseException:
            cur.close()
            raise
        finally:
            self._lock.release()
        try:
            yield cur, pinned.manifest.version if pinned else None
        finally:
            with contextlib.suppress(duckdb.Error):
                cur.execute("ROLLBACK")
            cur.close()
            if pinned:
                with self._readers_lock:
                    pinned.readers -= 1
            # retired versions nobody reads are detached by whoever next finds the engine free
            if self._lock.acquire(blocking=wait):
                try:
                    self._detach_retired()
                finally:
                    self._lock.release()

    def pinned_generation(self) -> int:
        """The :attr:`generation` whose state this thread's pinned snapshot sees (inside :meth:`pin`)."""
        return int(self._pinned.generation)

    def interrupt_handle(self, cur: duckdb.DuckDBPyConnection) -> Any:
        return cur.interrupt

    # -- refreshing ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Publish a new batch version if CURRENT.json changed, then load new segments."""
        manifest = BatchManifest.read(self.config.batch_dir)
        if manifest and (self._current is None or manifest.version != self._current.manifest.version):
            self._publish(manifest)
        self._load_segments()

    def _pin(self, version: str) -> None:
        """Tell the batch layer's pruning this process reads ``version`` (docs/batch.md, "Retention")."""
        pin = self.config.batch_dir / "pins" / f"serving-{os.getpid()}-{id(self)}.json"
        atomic_write(pin, json.dumps({"pid": os.getpid(), "version": version}))

    def _publish(self, manifest: BatchManifest) -> None:
        self._pin(manifest.version)
        safe = re.sub(r"[^A-Za-z0-9_]", "_", manifest.version)
        path = build_version_store(manifest, self.config.state_dir / "versions" / f"{safe}.duckdb")
        alias = f"v_{safe}"
        with self._lock:
            self._db.execute(f"ATTACH IF NOT EXISTS {_literal(str(path))} AS {_quote(alias)} (READ_ONLY)")
            new = _Version(manifest, alias)
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN TRANSACTION")
                self._create_views(new, cur)
                if self._has(new, "vehicle_history"):
                    cur.execute(
                        f"DELETE FROM rt WHERE event_id IN "
                        f"(SELECT event_id FROM {_quote(alias)}.vehicle_history)"
                    )
                cur.execute("COMMIT")
                self.generation += 1
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()
            if self._current:
                self._retired.append(self._current)
            self._current = new
            self._detach_retired()

    def _detach_retired(self) -> None:
        keep = []
        for old in self._retired:
            with self._readers_lock:
                readers = old.readers
            if readers == 0 and old.alias != (self._current.alias if self._current else None):
                self._db.execute(f"DETACH DATABASE IF EXISTS {_quote(old.alias)}")
            else:
                keep.append(old)
        self._retired = keep

    def _has(self, version: _Version | None, view: str) -> bool:
        return version is not None and view in version.manifest.views

    def _batch_columns(
        self, version: _Version, view: str, con: duckdb.DuckDBPyConnection
    ) -> list[tuple[str, str]]:
        rows = con.execute(f"DESCRIBE {_quote(version.alias)}.{_quote(view)}").fetchall()
        return [(r[0], r[1]) for r in rows]

    def _create_views(
        self, version: _Version | None = None, con: duckdb.DuckDBPyConnection | None = None
    ) -> None:
        con = con or self._db
        master = {f.name: _DUCK_TYPES[str(f.type)] for f in MASTER_SCHEMA}
        columns: dict[str, list[tuple[str, str]]] = {}
        tables: dict[str, set[str]] = {}
        for view in SERVING_VIEWS:
            if version is not None and self._has(version, view):
                cols = self._batch_columns(version, view, con)
                batch_sql = f"SELECT *, 'batch' AS layer FROM {_quote(version.alias)}.{_quote(view)}"
                tables.setdefault(f"{version.alias}.main.{view}", set()).add(view)
            elif view in MERGED_VIEWS:
                names = MASTER_COLUMNS if view == "vehicle_history" else _MILEAGE_DEFAULT
                cols = [(n, master[n]) for n in names]
                batch_sql = None
            else:
                continue
            if view in MERGED_VIEWS and any(c == "event_id" for c, _ in cols):
                rt_cols = ", ".join(
                    _quote(c) if c in master else f"CAST(NULL AS {t}) AS {_quote(c)}" for c, t in cols
                )
                where = " WHERE odometer_km IS NOT NULL" if view == "mileage_timeline" else ""
                rt_sql = f"SELECT {rt_cols}, 'realtime' AS layer FROM rt{where}"
                body = f"{batch_sql} UNION ALL {rt_sql}" if batch_sql else rt_sql
                tables.setdefault("memory.main.rt", set()).add(view)
            else:
                body = batch_sql or ""
            con.execute(f"CREATE OR REPLACE VIEW {_quote(view)} AS {body}")
            columns[view] = [*cols, ("layer", "VARCHAR")]
        self._columns = columns
        self._tables = {name: frozenset(v) for name, v in tables.items()}
        self.epoch += 1
        # one table of each database the views read starts its transaction (a view would be bound: ~3x dearer)
        touched = ["memory.main.rt"]
        first = next((v for v in SERVING_VIEWS if self._has(version, v)), None)
        if version is not None and first is not None:
            touched.append(f"{_quote(version.alias)}.main.{_quote(first)}")
        self._touch = f"SELECT 1 FROM {', '.join(touched)} LIMIT 0"

    def _load_segments(self) -> None:
        for _attempt in range(3):
            present = {
                p.name: p
                for p in self.config.realtime_dir.glob("*.parquet")
                if not p.name.startswith(".") and p.is_file()
            }
            self._loaded &= present.keys()
            new = sorted(set(present) - self._loaded)
            if not new:
                return
            try:
                self._ingest([present[n] for n in new])
            except (duckdb.IOException, duckdb.InvalidInputException, FileNotFoundError):
                continue  # a segment was compacted away between listing and reading: list again
            self._loaded.update(new)
            return

    def _ingest(self, files: list[Path]) -> None:
        listing = "[" + ", ".join(_literal(str(f)) for f in files) + "]"
        cols = ", ".join(_quote(c) for c in MASTER_COLUMNS)
        with self._lock:
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN TRANSACTION")
                cur.execute(
                    f"CREATE TEMP TABLE stage AS SELECT {cols} FROM read_parquet({listing}, union_by_name = true)"
                )
                if self._has(self._current, "vehicle_history"):
                    assert self._current is not None
                    alias = _quote(self._current.alias)
                    cur.execute(
                        f"DELETE FROM stage WHERE event_id IN (SELECT b.event_id FROM {alias}.vehicle_history b "
                        f"WHERE b.vehicle IN (SELECT DISTINCT vehicle FROM stage "
                        f"WHERE processed_time <= CAST(? AS TIMESTAMPTZ)))",
                        [self._current.manifest.watermark],
                    )
                cur.execute(f"INSERT OR IGNORE INTO rt SELECT {cols} FROM stage")
                cur.execute("DROP TABLE stage")
                cur.execute("COMMIT")
                self.generation += 1
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()
        (self.config.batch_dir / "pins" / f"serving-{os.getpid()}-{id(self)}.json").unlink(missing_ok=True)
