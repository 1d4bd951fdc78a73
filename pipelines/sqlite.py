"""One SQLite file shared by the threads of a process: a connection per thread, write
transactions that take the write lock at ``BEGIN IMMEDIATE``.

Autocommit mode (``isolation_level=None``) leaves transactions to :meth:`ThreadLocalSqlite.tx`,
which takes the lock before the first read, so two writers never both read and then
fail to upgrade (``SQLITE_BUSY`` mid-transaction); the 30 s busy timeout queues them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ThreadLocalSqlite"]


class ThreadLocalSqlite:
    """Connections to ``path``, one per thread, each set up with ``pragmas`` then ``on_connect``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        pragmas: Iterable[str] = ("journal_mode=WAL",),
        on_connect: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._pragmas = tuple(pragmas)
        self._on_connect = on_connect
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            for pragma in self._pragmas:
                conn.execute(f"PRAGMA {pragma}")
            if self._on_connect is not None:
                self._on_connect(conn)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back on any exception."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection; a later call opens new ones."""
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
