"""Receipts: one per paid query, signed by the service, kept in its own SQLite file.

A receipt says who paid, for which query (SHA-256 of the SQL), on which batch
version, how many rows of each producer it used and what that cost.  It is
written once per signed request (``(consumer, nonce)`` is unique), so a query
is never charged twice; settlement marks it with the transaction hash.
The service's signature is EIP-191 over the receipt's RFC 8785 canonical JSON.

Spent nonces are held in memory (a set pruned as they expire, so it holds at most
the requests of the last ``max_request_age_s``) and in the file (reloaded on
start).  A paid query's nonce is written in the same transaction as its receipt
(:meth:`ReceiptStore.issue`): one commit per query, durable before the response
says what it was charged.  ``synchronous=NORMAL`` in WAL mode: a commit survives
a crash of the service; a power loss may lose the last commits, never corrupt.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import rfc8785
from pydantic import SecretStr

from serving.eip191 import SignatureError, Signer, recover
from serving.errors import ReceiptsInUseError
from serving.market.pricing import Quote

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    receipt_no   INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer     TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    query_hash   TEXT NOT NULL,
    batch_version TEXT,
    rows_json    TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    fee_bps      INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    signer       TEXT NOT NULL,
    signature    TEXT NOT NULL,
    settled_tx   TEXT,
    UNIQUE (consumer, nonce)
);
CREATE INDEX IF NOT EXISTS receipts_pending ON receipts (settled_tx, consumer);
CREATE TABLE IF NOT EXISTS failed_receipts (
    receipt_no INTEGER PRIMARY KEY,
    reason     TEXT NOT NULL,
    party      TEXT,
    tx         TEXT,
    failed_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nonces (
    account TEXT NOT NULL,
    nonce   TEXT NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (account, nonce)
);
"""


#: ``settled_tx`` of a receipt the Marketplace could not settle (why: table ``failed_receipts``)
FAILED = "failed"

RECEIPT_FIELDS = (
    "receipt_no", "consumer", "query_hash", "batch_version", "by_producer", "amount_cents", "fee_bps", "created_at",
)  # fmt: skip


def _plain(value: Any) -> bool:
    """True if orjson writes ``value`` exactly as RFC 8785 does: printable-ASCII strings, safe integers."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -(2**53) < value < 2**53
    if isinstance(value, str):
        return value.isascii() and value.isprintable()
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(k) and _plain(v) for k, v in value.items())
    return False


def canonical_json(body: dict[str, Any]) -> bytes:
    """The RFC 8785 (JCS) bytes of a receipt body.

    For printable-ASCII keys and strings and integers within ±2^53 — every receipt
    of ASCII producer ids — JCS is keys sorted, no whitespace, ``"`` and ``\\``
    escaped: orjson's sorted output, ~80× cheaper than ``rfc8785``.  Anything
    else (non-ASCII, control characters, floats, large integers) goes to ``rfc8785``.
    """
    if _plain(body):
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return rfc8785.dumps(body)


def receipt_body(row: sqlite3.Row) -> dict[str, Any]:
    """The signed part of a stored receipt."""
    body = {k: row[k] for k in RECEIPT_FIELDS if k != "by_producer"}
    body["by_producer"] = json.loads(row["rows_json"])
    return body


def verify_receipt(receipt: dict[str, Any]) -> str:
    """The address that signed a receipt (compare it with the service's published signer)."""
    body = {k: receipt[k] for k in RECEIPT_FIELDS}
    try:
        return recover(rfc8785.dumps(body), str(receipt["signature"]))
    except SignatureError:
        return ""  # no account signed it


class Checkpointer:
    """Copies a WAL-mode SQLite file's log back into it from a daemon thread, between commits.

    With ``wal_autocheckpoint=0`` on the writing connection a commit only appends to the
    log (``synchronous=NORMAL``: no fsync).  Without this thread the copy and its fsyncs
    would run inside whichever request's commit crosses SQLite's 1,000-page mark (1-6 ms,
    one request in ~150).  Here the copy starts right after a commit (:meth:`committed`),
    at most once per ``interval_s``, on a second connection in PASSIVE mode, so it never
    blocks the writer; when the last commit is in, the next write restarts the log from
    its start.  Should commits keep overlapping the copies until the log passes
    ``max_log_bytes``, one TRUNCATE checkpoint waits for the writer and empties it.
    """

    def __init__(self, path: Path, interval_s: float, max_log_bytes: int = 64 * 2**20) -> None:
        self._path = path
        self._log = path.with_name(path.name + "-wal")
        self._interval = interval_s
        self._max_log = max_log_bytes
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.checkpoints = 0
        self._copying = False
        self._thread = threading.Thread(target=self._run, name="pcc-receipts-checkpoint", daemon=True)
        self._thread.start()

    @property
    def caught_up(self) -> bool:
        """No commit waits to be copied back and no copy is running."""
        return not self._wake.is_set() and not self._copying

    def committed(self) -> None:
        """Called by the writer after each commit."""
        if not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        db = sqlite3.connect(str(self._path), check_same_thread=False, isolation_level=None, timeout=30)
        try:
            while True:
                self._wake.wait()
                if self._stop.is_set():
                    return
                self._copying = True
                self._wake.clear()
                try:
                    self._checkpoint(db)
                finally:
                    self._copying = False
                if self._stop.wait(self._interval):
                    return
        finally:
            db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if self._log.exists() and self._log.stat().st_size > self._max_log:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            self._wake.set()  # busy or gone: tried again next round; the log keeps every commit
            return
        self.checkpoints += 1

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)


def _hold(lock_path: Path) -> IO[str]:
    """An exclusive lock on ``lock_path`` for this process, else :class:`ReceiptsInUseError` naming the holder."""
    fh = open(lock_path, "a+", encoding="ascii")  # noqa: SIM115 (held until close)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise ReceiptsInUseError(
            f"{lock_path.with_suffix('')} is in use by another serving process (pid {holder}): "
            "one `pcc serve` per data directory"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


class ReceiptStore:
    """Receipts and spent nonces in one SQLite file (thread-safe)."""

    def __init__(self, path: Path, signing_key: SecretStr | str, checkpoint_s: float = 0.5) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # one writer per file: receipt numbers, pending cents and spent nonces are kept in memory too
        self._owner = _hold(path.with_name(path.name + ".lock"))
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync per receipt, never corrupt
        # the WAL is copied back by a checkpointer thread, not by the commit that crosses the
        # 1,000-page mark (that commit fsyncs: 1-6 ms on one request in ~150)
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._checkpointer = Checkpointer(path, checkpoint_s)
        self._signer = Signer(
            signing_key.get_secret_value() if isinstance(signing_key, SecretStr) else signing_key
        )
        self._spent = 0
        #: unsettled cents per consumer, kept in step with the file (this process writes it alone)
        self._pending: dict[str, int] = {}
        now = int(time.time())
        #: spent, unexpired nonces: (account, nonce) → expiry, and the same keys in expiry order
        self._nonces: dict[tuple[str, str], int] = {
            (a, n): e
            for a, n, e in self._db.execute(
                "SELECT account, nonce, expires FROM nonces WHERE expires >= ?", (now,)
            )
        }
        self._expiry = [(e, k) for k, e in self._nonces.items()]
        heapq.heapify(self._expiry)
        row = self._db.execute("SELECT coalesce(max(receipt_no), 0) FROM receipts").fetchone()
        self._next_no = int(row[0]) + 1

    @property
    def signer(self) -> str:
        return self._signer.address

    def spend_nonce(self, account: str, nonce: str, expires: int, durable: bool = True) -> bool:
        """Record a nonce; False if it was already spent.

        With ``durable=False`` it is spent in memory only: the caller writes it with the
        request's receipt (:meth:`issue`) or alone (:meth:`record_nonce`) before answering.
        """
        key = (account.lower(), nonce)
        with self._lock:
            now = int(time.time())
            while self._expiry and self._expiry[0][0] < now:
                _, old = heapq.heappop(self._expiry)
                self._nonces.pop(old, None)
            if key in self._nonces:
                return False
            self._nonces[key] = expires
            heapq.heappush(self._expiry, (expires, key))
            self._spent += 1
            if self._spent % 1000 == 0:
                self._db.execute("DELETE FROM nonces WHERE expires < ?", (now,))
            if durable:
                self._write_nonce(key, expires)
            return True

    def record_nonce(self, account: str, nonce: str, expires: int) -> None:
        """Write a nonce spent with ``durable=False`` whose request ends without a receipt."""
        with self._lock:
            self._write_nonce((account.lower(), nonce), expires)

    def _write_nonce(self, key: tuple[str, str], expires: int) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO nonces (account, nonce, expires) VALUES (?, ?, ?)", (*key, expires)
        )
        self._checkpointer.committed()

    def spent_nonces(self) -> int:
        """Unexpired nonces held in memory (bounded by the requests of the last max request age)."""
        with self._lock:
            return len(self._nonces)

    def pending_cents(self, consumer: str) -> int:
        """What ``consumer``'s unsettled receipts owe (read from the file once, then kept up to date)."""
        with self._lock:
            return self._pending_locked(consumer)

    def _pending_locked(self, consumer: str) -> int:
        cents = self._pending.get(consumer)
        if cents is None:
            row = self._db.execute(
                "SELECT coalesce(sum(amount_cents), 0) FROM receipts WHERE consumer = ? AND settled_tx IS NULL",
                (consumer,),
            ).fetchone()
            cents = self._pending[consumer] = int(row[0])
        return cents

    def issue(
        self, consumer: str, nonce: str, query_hash: str, quote: Quote, expires: int | None = None
    ) -> dict[str, Any]:
        """Write and sign the receipt of one paid query (one transaction, committed on return).

        ``expires``: the request's nonce was spent with ``durable=False``; it is written too.
        """
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        by_producer = orjson.loads(orjson.dumps(quote.by_producer, option=orjson.OPT_SORT_KEYS))
        rows_json = json.dumps(by_producer, sort_keys=True)
        with self._lock:
            receipt_no = self._next_no
            body = {
                "receipt_no": receipt_no, "consumer": consumer, "query_hash": query_hash,
                "batch_version": quote.version, "by_producer": by_producer,
                "amount_cents": quote.amount_cents, "fee_bps": quote.fee_bps, "created_at": created,
            }  # fmt: skip
            sig_hex = self._signer.sign(canonical_json(body))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if expires is not None:
                    self._write_nonce((consumer.lower(), nonce), expires)
                self._db.execute(
                    "INSERT INTO receipts (receipt_no, consumer, nonce, query_hash, batch_version, rows_json,"
                    " amount_cents, fee_bps, created_at, signer, signature, settled_tx)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        receipt_no, consumer, nonce, query_hash, quote.version, rows_json, quote.amount_cents,
                        quote.fee_bps, created, self.signer, sig_hex, "free" if quote.amount_cents == 0 else None,
                    ),
                )  # fmt: skip
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._checkpointer.committed()
            self._next_no += 1
            if quote.amount_cents and consumer in self._pending:
                self._pending[consumer] += quote.amount_cents
        return {**body, "signer": self.signer, "signature": sig_hex, "settled_tx": None}

    def _rows(self, where: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM receipts {where}", tuple(args)).fetchall()
        return [
            {
                **receipt_body(r),
                "signer": r["signer"],
                "signature": r["signature"],
                "settled_tx": r["settled_tx"],
            }
            for r in rows
        ]

    def for_consumer(self, consumer: str, limit: int = 100) -> list[dict[str, Any]]:
        return self._rows("WHERE consumer = ? ORDER BY receipt_no DESC LIMIT ?", (consumer, limit))

    def pending(self, limit: int = 200) -> list[dict[str, Any]]:
        """Unsettled receipts, grouped by consumer so the Marketplace collects each consumer once."""
        return self._rows("WHERE settled_tx IS NULL ORDER BY consumer, receipt_no LIMIT ?", (limit,))

    def mark_settled(self, receipt_nos: Sequence[int], tx_hash: str) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE receipts SET settled_tx = ? WHERE receipt_no = ? AND settled_tx IS NULL",
                [(tx_hash, n) for n in receipt_nos],
            )
            self._checkpointer.committed()
            self._pending.clear()  # recounted from the file on next use

    def mark_failed(
        self, failures: Sequence[tuple[int, str, str | None]], tx_hash: str | None = None
    ) -> None:
        """Take receipts out of settlement: ``(receipt_no, reason, party at fault)``, by ``tx_hash`` if one was sent.

        Their ``settled_tx`` becomes :data:`FAILED`: they are no longer pending, nor owed.
        """
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for receipt_no, reason, party in failures:
                    cur = self._db.execute(
                        "UPDATE receipts SET settled_tx = ? WHERE receipt_no = ? AND settled_tx IS NULL",
                        (FAILED, receipt_no),
                    )
                    if cur.rowcount:
                        self._db.execute(
                            "INSERT OR REPLACE INTO failed_receipts VALUES (?, ?, ?, ?, ?)",
                            (receipt_no, reason, party, tx_hash, now),
                        )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._checkpointer.committed()
            self._pending.clear()  # recounted from the file on next use

    def failed(self, limit: int = 100) -> list[dict[str, Any]]:
        """Receipts settlement gave up on, newest first, with the reason."""
        with self._lock:
            return failed_receipts(self._db, limit)

    def close(self) -> None:
        self._checkpointer.close()
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
        self._owner.close()  # releases the lock


def failed_receipts(db: sqlite3.Connection, limit: int = 100) -> list[dict[str, Any]]:
    """Failed receipts in ``db``, newest first: number, consumer, cents, reason, party, tx, time."""
    rows = db.execute(
        "SELECT r.receipt_no, r.consumer, r.amount_cents, r.created_at, f.reason, f.party, f.tx, f.failed_at"
        " FROM failed_receipts f JOIN receipts r USING (receipt_no) ORDER BY r.receipt_no DESC LIMIT ?",
        (limit,),
    ).fetchall()
    names = ("receipt_no", "consumer", "amount_cents", "created_at", "reason", "party", "tx", "failed_at")
    return [dict(zip(names, tuple(r), strict=True)) for r in rows]


def read_failed_receipts(path: Path, limit: int = 100) -> list[dict[str, Any]]:
    """:func:`failed_receipts` of a receipts file, read-only (while its service runs, too)."""
    if not path.is_file():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'failed_receipts'").fetchone():
            return []  # written by a service from before failed receipts were recorded
        return failed_receipts(db, limit)
    finally:
        db.close()


def read_receipt_counts(path: Path) -> dict[str, tuple[int, int]]:
    """Receipts of a receipts file by status (pending, settled, failed, free): (count, cents); read-only."""
    if not path.is_file():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT CASE WHEN settled_tx IS NULL THEN 'pending' WHEN settled_tx IN (?, 'free')"
            " THEN settled_tx ELSE 'settled' END AS status, count(*), coalesce(sum(amount_cents), 0)"
            " FROM receipts GROUP BY status",
            (FAILED,),
        ).fetchall()
    finally:
        db.close()
    return {str(status): (int(n), int(cents)) for status, n, cents in rows}
