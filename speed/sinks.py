"""The speed layer's sinks and its effectively-once commit.

Three sinks:

* the real-time view: ``<data_dir>/realtime/seg-<unix_ms>-<worker>-<n>.parquet``,
  one segment per flush (at least every ``flush_interval_ms``);
* the master dataset: ``<master>/bucket=NNN/part-<unix_ms>-<worker>-<n>.parquet``
  (or ``event_date=YYYY-MM-DD/`` in a master not yet migrated), on its own
  cadence (:mod:`speed.master`): the rows of many segments at once, one file
  per vehicle bucket, sorted by vehicle and event time;
* dead letters: the ``pcc.deadletter`` topic, original bytes (protected fields
  in clear redacted, :func:`speed.process.redacted`) + ``pcc-reason``,
  ``pcc-detail``, ``pcc-origin`` headers.

One flush is one transaction:

1. dead letters are produced and the producer flushed (``acks=all``);
2. the segment is written under a ``.tmp`` name and fsynced (master files, when
   a master write has finished in the background, are already fsynced
   ``.tmp`` files);
3. a manifest ``<data_dir>/speed/commits/<seq>.json`` (written atomically) names
   the renames and the durable state after the flush: **the commit point**;
4. the renames are done, ``offsets.json`` is replaced by that state, the
   manifest is deleted, and only then the offsets both sinks hold are committed
   to the Kafka consumer group (lag monitoring; the source of truth is
   ``offsets.json``).

The durable state (``offsets.json``): ``seq`` and ``offsets`` (the real-time
view holds every accepted event before them), ``master_seq`` and
``master_offsets`` (the master dataset holds exactly the rows of the segments
up to flush ``master_seq``), and ``unmastered``, the segments after it.

:func:`recover` (run before reading) finishes any manifest left by a crash
(renames are idempotent), deletes ``.tmp`` files no manifest names, copies the
rows of the ``unmastered`` segments into the master dataset (the segments are
the write-ahead log of the master dataset: same rows, same columns) and
returns the offsets to resume from.  Records after those offsets are read
again; events already accepted are recognised by event id and origin
(:class:`~speed.state.SeenEvents`, rebuilt from the master dataset) and
skipped, so every accepted event is in each sink exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.dataset import MASTER_SCHEMA, master_files
from pipelines.files import atomic_write, disk_full, fsync_dir, remove_stale_temporaries
from speed.errors import DiskFull, LedgerUnavailable, SinkStateError
from speed.master import (
    MasterBatcher,
    Offsets,
    Prepared,
    offsets_from_json,
    offsets_to_json,
    write_master_files,
    write_parquet,
)
from speed.process import BatchResult, DeadLetter
from speed.source import KafkaRecord

__all__ = ["Offsets", "SinkWriter", "read_master", "recover"]


def _write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj).encode())


def _read_state(state_dir: Path) -> dict[str, Any]:
    """``offsets.json``; a state written before the master cadence existed had both sinks at ``seq``."""
    offsets_file = state_dir / "offsets.json"
    state = json.loads(offsets_file.read_text()) if offsets_file.exists() else {"seq": 0, "offsets": {}}
    state.setdefault("master_seq", state["seq"])
    state.setdefault("master_offsets", state["offsets"])
    state.setdefault("unmastered", [])
    return state


def _commit(state_dir: Path, seq: int, renames: list[tuple[str, str]], state: dict[str, Any]) -> None:
    """Steps 3 and 4 of a flush: manifest (the commit point), renames, ``offsets.json``."""
    manifest = state_dir / "commits" / f"{seq}.json"
    _write_json_atomic(manifest, {"seq": seq, "renames": renames, "state": state})
    for tmp, final in renames:
        os.replace(tmp, final)
    for d in {Path(f).parent for _, f in renames}:
        fsync_dir(d)
    _write_json_atomic(state_dir / "offsets.json", state)
    manifest.unlink()


def recover(state_dir: Path, realtime_dir: Path, master_dir: Path, worker: str = "w0") -> Offsets:
    """Finish interrupted flushes, drop orphan temporary files, bring the master dataset up to the
    real-time view; returns the durable offsets (both sinks hold every accepted event before them)."""
    commits = state_dir / "commits"
    commits.mkdir(parents=True, exist_ok=True)
    state = _read_state(state_dir)
    named: set[str] = set()
    for manifest in sorted(commits.glob("*.json"), key=lambda p: int(p.stem)):
        body = json.loads(manifest.read_text())
        for tmp, final in body["renames"]:
            named.add(tmp)
            if os.path.exists(tmp):
                os.replace(tmp, final)
            elif not os.path.exists(final):
                raise SinkStateError(f"flush {manifest.name}: neither {tmp} nor {final} exists")
        if body["seq"] > state["seq"]:
            if "state" in body:
                state = body["state"]
            else:  # a manifest of the one-transaction-for-both-sinks layout
                offsets = {**state["offsets"], **body["offsets"]}
                state = {"seq": body["seq"], "offsets": offsets, "master_seq": body["seq"],
                         "master_offsets": offsets, "unmastered": []}  # fmt: skip
            _write_json_atomic(state_dir / "offsets.json", state)
        manifest.unlink()
    for root in (realtime_dir, master_dir):
        if root.exists():
            for tmp in root.rglob("*.parquet.tmp"):
                if str(tmp) not in named:
                    tmp.unlink()
    for root in (state_dir, realtime_dir, master_dir):  # state files a killed writer was replacing
        remove_stale_temporaries(root)
    if state["unmastered"]:
        _copy_to_master(state_dir, master_dir, worker, state)
    return offsets_from_json(state["offsets"])


def _copy_to_master(state_dir: Path, master_dir: Path, worker: str, state: dict[str, Any]) -> None:
    """The rows of the segments the master dataset does not hold yet, committed into it."""
    tables = []
    for _seq, path in state["unmastered"]:
        if not os.path.exists(path):
            raise SinkStateError(
                f"the real-time segment {path} is gone but its rows are not in the master dataset yet"
            )
        tables.append(pq.read_table(path, schema=MASTER_SCHEMA).replace_schema_metadata(None))
    offsets = offsets_from_json(state["offsets"])
    name = f"{int(time.time() * 1000)}-{worker}-{state['seq']}"
    renames = write_master_files(pa.concat_tables(tables), master_dir, name, offsets)
    seq = state["seq"] + 1
    new_state = {**state, "seq": seq, "master_seq": seq, "master_offsets": state["offsets"], "unmastered": []}
    _commit(state_dir, seq, renames, new_state)


RESTORE_COLUMNS = (
    "event_id",
    "event_type",
    "source_id",
    "vehicle",
    "event_time",
    "odometer_km",
    "lat",
    "lon",
    "log_index",
    "verification",
    "topic",
    "partition",
    "offset",
)


def read_master(master_dir: Path) -> list[dict[str, Any]]:
    """The columns the speed layer's state needs, from every committed master-dataset file."""
    files = master_files(master_dir)
    if not files:
        return []
    tables = [pq.read_table(f, columns=list(RESTORE_COLUMNS)) for f in files]
    table = pa.concat_tables(tables)
    table = table.set_column(
        table.schema.get_field_index("event_time"), "event_time", table.column("event_time").cast(pa.int64())
    )
    return table.to_pylist()


def durable_seq(state_dir: Path) -> int:
    return int(_read_state(state_dir)["seq"])


class DeadLetterProducer:
    """Produces dead letters to Kafka (original bytes, reason headers)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaProducer

        self._topic = topic
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, retries=5)

    def send_all(self, letters: list[DeadLetter]) -> None:
        from kafka.errors import KafkaError

        try:
            futures = [
                self._producer.send(
                    self._topic,
                    key=d.event_id.encode() if d.event_id else None,
                    value=d.value if d.value is not None else d.record.value,  # protected fields redacted
                    headers=[
                        ("pcc-reason", d.reason.encode()),
                        ("pcc-detail", d.detail[:2000].encode()),
                        ("pcc-origin", d.record.origin.encode()),
                    ],
                )
                for d in letters
            ]
            self._producer.flush()
            for f in futures:
                f.get(timeout=30)
        except KafkaError as exc:
            raise LedgerUnavailable(f"dead-letter topic {self._topic} unavailable: {exc}") from exc

    def close(self) -> None:
        self._producer.close()


class SinkWriter:
    """Buffers accepted rows and dead letters; :meth:`flush` commits them as one transaction.

    Every flush writes a real-time segment; the master dataset gets the rows of
    many segments at once, when ``master_flush_rows`` rows are waiting or the
    oldest has waited ``master_flush_interval_s`` (and at the last flush).
    """

    def __init__(
        self,
        realtime_dir: Path,
        master_dir: Path,
        state_dir: Path,
        worker: str,
        flush_interval_ms: int,
        dead_letters: DeadLetterProducer | None,
        offset_committer: OffsetCommitter | None = None,
        *,
        master_flush_rows: int = 100_000,
        master_flush_interval_s: float = 60.0,
    ) -> None:
        self._realtime = realtime_dir
        self._state_dir = state_dir
        self._worker = worker
        self._interval_s = flush_interval_ms / 1000
        self._dead_letters = dead_letters
        self._committer = offset_committer
        self._master = MasterBatcher(master_dir, worker, master_flush_rows, master_flush_interval_s)
        self._rows: list[dict[str, Any]] = []
        self._dead: list[DeadLetter] = []
        self._next: Offsets = {}
        self._last_flush = time.monotonic()
        for d in (realtime_dir, master_dir, state_dir / "commits"):
            d.mkdir(parents=True, exist_ok=True)
        self._state = _read_state(state_dir)
        if self._state["unmastered"]:
            raise SinkStateError(
                f"run recover() on {state_dir} first: segments are missing from the master dataset"
            )
        self._committed = offsets_from_json(self._state["offsets"])

    def add(self, records: list[KafkaRecord], result: BatchResult) -> None:
        self._rows.extend(result.rows)
        self._dead.extend(result.dead)
        for r in records:
            key = (r.topic, r.partition)
            if r.offset + 1 > self._next.get(key, -1):
                self._next[key] = r.offset + 1

    def due(self) -> bool:
        return time.monotonic() - self._last_flush >= self._interval_s

    @property
    def buffered(self) -> int:
        return len(self._rows) + len(self._dead)

    @property
    def master_lag_rows(self) -> int:
        """Rows in the real-time view not yet in the master dataset."""
        return self._master.waiting_rows

    def flush(self, pending_floor: Offsets, *, final: bool = False) -> int:  # noqa: C901, PLR0912 (the commit protocol, read in one place)
        """Make everything buffered durable; returns the number of rows written to the real-time view.

        ``final`` (the end of a run): the master dataset is brought up to the
        real-time view in this flush, without waiting for its cadence.
        """
        now = time.monotonic()
        self._last_flush = now
        offsets = {k: min(v, pending_floor.get(k, v)) for k, v in self._next.items()}
        offsets = {k: v for k, v in offsets.items() if self._committed.get(k) != v}
        master_work = self._master.ready() or (final and self._master.waiting_rows > 0)
        if not self._rows and not self._dead and not offsets and not master_work:
            return 0
        if self._dead and self._dead_letters is not None:
            self._dead_letters.send_all(self._dead)  # transient failure: raise, keep the buffer
        seq = self._state["seq"] + 1
        merged = {**self._committed, **offsets}
        state = {**self._state, "seq": seq, "offsets": offsets_to_json(merged)}
        renames: list[tuple[str, str]] = []
        unmastered = list(self._state["unmastered"])
        masters: list[Prepared] = []
        try:
            masters += [p for p in (self._master.take(wait=final),) if p is not None]
            if self._rows:
                table = pa.Table.from_pylist(self._rows, schema=MASTER_SCHEMA)
                segment = self._realtime / f"seg-{int(time.time() * 1000)}-{self._worker}-{seq}.parquet"
                renames.append((str(write_parquet(table, segment, merged)), str(segment)))
                unmastered.append([seq, str(segment)])
            if final:
                if self._rows:
                    self._master.add(seq, table, merged, now)
                if (rest := self._master.write_now()) is not None:
                    masters.append(rest)
        except OSError as exc:
            if not disk_full(exc):
                raise
            for tmp, _ in [*renames, *(r for p in masters for r in p.renames)]:  # before the commit point
                Path(tmp).unlink(missing_ok=True)
            raise self._full(exc) from exc
        for prepared in masters:  # in flush order: each covers the segments up to its seq
            renames += prepared.renames
            state["master_seq"] = prepared.seq
            state["master_offsets"] = offsets_to_json(prepared.offsets)
            unmastered = [u for u in unmastered if u[0] > prepared.seq]
        if not unmastered:  # no row is in the real-time view only: both sinks are at the same offsets
            state["master_offsets"] = state["offsets"]
        state["unmastered"] = unmastered
        try:
            _commit(self._state_dir, seq, renames, state)
        except OSError as exc:  # past the commit point: the next start's recover() finishes it
            if not disk_full(exc):
                raise
            raise self._full(exc) from exc
        if self._rows and not final:  # only once committed: a failed flush must not queue its rows twice
            self._master.add(seq, table, merged, now)
        master_moved = state["master_offsets"] != self._state["master_offsets"]
        self._state = state
        self._committed = merged
        written = len(self._rows)
        self._rows, self._dead = [], []
        if self._committer is not None and master_moved:
            self._committer.commit(offsets_from_json(state["master_offsets"]))
        if not final and self._master.due(now):
            self._master.start()
        return written

    def _full(self, exc: OSError) -> DiskFull:
        where = Path(exc.filename) if exc.filename else self._realtime
        while not where.exists() and where != where.parent:
            where = where.parent
        return DiskFull(
            f"no space left on the disk of {exc.filename or self._realtime} "
            f"({shutil.disk_usage(where).free:,} bytes free): the speed layer stopped. Nothing it "
            "acknowledged is lost: Kafka offsets are committed only past durable rows, and the next "
            "start finishes or redoes this flush; free space (or move the data directory) and start it again"
        )

    def close(self) -> None:
        self._master.close()
        if self._dead_letters is not None:
            self._dead_letters.close()
        if self._committer is not None:
            self._committer.close()


class OffsetCommitter:
    """Commits offsets to the consumer group once both sinks hold them (lag monitoring only)."""

    def __init__(self, bootstrap: str, group: str) -> None:
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)

    def commit(self, offsets: Offsets) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        # monitoring only: the durable offsets live in offsets.json
        with contextlib.suppress(Exception):
            self._consumer.commit(
                {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._consumer.close(autocommit=False)
