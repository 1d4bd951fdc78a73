"""The speed layer's sinks and its effectively-once commit.

Three sinks, flushed together (at least every ``flush_interval_ms``):

* the real-time view: ``<data_dir>/realtime/seg-<unix_ms>-<worker>-<n>.parquet``;
* the master dataset: ``<master>/event_date=YYYY-MM-DD/part-<unix_ms>-<worker>-<n>.parquet``;
* dead letters: the ``pcc.deadletter`` topic, original bytes + ``pcc-reason``,
  ``pcc-detail``, ``pcc-origin`` headers.

One flush is one transaction:

1. dead letters are produced and the producer flushed (``acks=all``);
2. every Parquet file is written under a ``.tmp`` name and fsynced;
3. a manifest ``<data_dir>/speed/commits/<seq>.json`` (written atomically) names
   the renames and the Kafka offsets the flush covers: **the commit point**;
4. the renames are done, ``offsets.json`` is replaced atomically, the manifest
   is deleted, and only then the offsets are committed to the Kafka consumer
   group (for lag monitoring; the source of truth is ``offsets.json``).

:func:`recover` (run before reading) finishes any manifest left by a crash
(renames are idempotent), deletes ``.tmp`` files no manifest names, and
returns the offsets to resume from.  Records after those offsets are read
again; events already accepted are recognised by event id and origin
(:class:`~speed.state.SeenEvents`, rebuilt from the master dataset) and
skipped, so every accepted event is in each sink exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.dataset import MASTER_SCHEMA
from speed.errors import LedgerUnavailable, SinkStateError
from speed.process import BatchResult, DeadLetter
from speed.source import KafkaRecord

Offsets = dict[tuple[str, int], int]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(json.dumps(obj).encode())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _offsets_to_json(offsets: Offsets) -> dict[str, int]:
    return {f"{t}/{p}": o for (t, p), o in sorted(offsets.items())}


def _offsets_from_json(obj: dict[str, int]) -> Offsets:
    out: Offsets = {}
    for key, offset in obj.items():
        topic, _, partition = key.rpartition("/")
        out[(topic, int(partition))] = int(offset)
    return out


def _write_parquet(table: pa.Table, final: Path, offsets: Offsets) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    meta = {b"pcc.offsets": json.dumps(_offsets_to_json(offsets)).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    with open(tmp, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def recover(state_dir: Path, dirs: Iterable[Path]) -> Offsets:
    """Finish interrupted flushes, drop orphan temporary files, return the durable offsets."""
    commits = state_dir / "commits"
    commits.mkdir(parents=True, exist_ok=True)
    offsets_file = state_dir / "offsets.json"
    durable = json.loads(offsets_file.read_text()) if offsets_file.exists() else {"seq": 0, "offsets": {}}
    named: set[str] = set()
    for manifest in sorted(commits.glob("*.json"), key=lambda p: int(p.stem)):
        body = json.loads(manifest.read_text())
        for tmp, final in body["renames"]:
            named.add(tmp)
            if os.path.exists(tmp):
                os.replace(tmp, final)
            elif not os.path.exists(final):
                raise SinkStateError(f"flush {manifest.name}: neither {tmp} nor {final} exists")
        if body["seq"] > durable["seq"]:
            durable = {"seq": body["seq"], "offsets": {**durable["offsets"], **body["offsets"]}}
            _write_json_atomic(offsets_file, durable)
        manifest.unlink()
    for root in dirs:
        if root.exists():
            for tmp in root.rglob("*.parquet.tmp"):
                if str(tmp) not in named:
                    tmp.unlink()
    return _offsets_from_json(durable["offsets"])


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
    files = sorted(master_dir.glob("event_date=*/*.parquet")) if master_dir.exists() else []
    if not files:
        return []
    tables = [pq.read_table(f, columns=list(RESTORE_COLUMNS)) for f in files]
    table = pa.concat_tables(tables)
    table = table.set_column(
        table.schema.get_field_index("event_time"), "event_time", table.column("event_time").cast(pa.int64())
    )
    return table.to_pylist()


def durable_seq(state_dir: Path) -> int:
    offsets_file = state_dir / "offsets.json"
    return int(json.loads(offsets_file.read_text())["seq"]) if offsets_file.exists() else 0


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
                    value=d.record.value,
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
    """Buffers accepted rows and dead letters; :meth:`flush` commits them as one transaction."""

    def __init__(
        self,
        realtime_dir: Path,
        master_dir: Path,
        state_dir: Path,
        worker: str,
        flush_interval_ms: int,
        dead_letters: DeadLetterProducer | None,
        offset_committer: Any = None,
    ) -> None:
        self._realtime = realtime_dir
        self._master = master_dir
        self._state = state_dir
        self._worker = worker
        self._interval_s = flush_interval_ms / 1000
        self._dead_letters = dead_letters
        self._committer = offset_committer
        self._rows: list[dict[str, Any]] = []
        self._dead: list[DeadLetter] = []
        self._next: Offsets = {}
        self._committed: Offsets = {}
        self._last_flush = time.monotonic()
        self._seq = durable_seq(state_dir)
        self._n = 0
        for d in (realtime_dir, master_dir, state_dir / "commits"):
            d.mkdir(parents=True, exist_ok=True)

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

    def flush(self, pending_floor: Offsets) -> int:
        """Make everything buffered durable; returns the number of rows written."""
        self._last_flush = time.monotonic()
        offsets = {k: min(v, pending_floor.get(k, v)) for k, v in self._next.items()}
        offsets = {k: v for k, v in offsets.items() if self._committed.get(k) != v}
        if not self._rows and not self._dead and not offsets:
            return 0
        if self._dead and self._dead_letters is not None:
            self._dead_letters.send_all(self._dead)  # transient failure: raise, keep the buffer
        self._seq += 1
        now_ms = int(time.time() * 1000)
        renames: list[tuple[str, str]] = []
        if self._rows:
            table = pa.Table.from_pylist(self._rows, schema=MASTER_SCHEMA)
            name = f"{now_ms}-{self._worker}-{self._seq}.parquet"
            final = self._realtime / f"seg-{name}"
            renames.append((str(_write_parquet(table, final, offsets)), str(final)))
            for date, part in _by_date(table):
                final = self._master / f"event_date={date}" / f"part-{name}"
                renames.append((str(_write_parquet(part, final, offsets)), str(final)))
        manifest = self._state / "commits" / f"{self._seq}.json"
        _write_json_atomic(
            manifest, {"seq": self._seq, "renames": renames, "offsets": _offsets_to_json(offsets)}
        )
        for tmp, final in renames:
            os.replace(tmp, final)
        for d in {Path(f).parent for _, f in renames}:
            _fsync_dir(d)
        offsets_file = self._state / "offsets.json"
        merged = {**self._committed, **offsets}
        _write_json_atomic(offsets_file, {"seq": self._seq, "offsets": _offsets_to_json(merged)})
        manifest.unlink()
        self._committed = merged
        written = len(self._rows)
        self._rows, self._dead = [], []
        if self._committer is not None:
            self._committer(offsets)
        return written

    def close(self) -> None:
        if self._dead_letters is not None:
            self._dead_letters.close()


def _by_date(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    dates = table.column("event_date").to_pylist()
    distinct = sorted(set(dates))
    if len(distinct) == 1:
        yield distinct[0], table
        return
    import pyarrow.compute as pc

    for date in distinct:
        yield date, table.filter(pc.equal(table.column("event_date"), date))


def kafka_offset_committer(bootstrap: str, group: str) -> Any:
    """A callable committing offsets to the consumer group (after the sinks are durable)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)

    def commit(offsets: Offsets) -> None:
        # monitoring only: the durable offsets live in offsets.json
        with contextlib.suppress(Exception):
            consumer.commit(
                {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
            )

    return commit
