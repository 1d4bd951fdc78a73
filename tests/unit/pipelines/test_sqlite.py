"""pipelines.sqlite: one connection per thread, write transactions that commit or roll back whole."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pipelines.sqlite import ThreadLocalSqlite


def test_a_transaction_commits_or_rolls_back_whole(tmp_path: Path) -> None:
    db = ThreadLocalSqlite(tmp_path / "t.sqlite")
    with db.tx() as tx:
        tx.execute("CREATE TABLE t(x INTEGER)")
        tx.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError), db.tx() as tx:
        tx.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("halfway")
    assert db.conn().execute("SELECT x FROM t").fetchall() == [(1,)]
    assert db.conn().execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


def test_each_thread_has_its_own_connection_and_close_ends_them_all(tmp_path: Path) -> None:
    seen: list[int] = []
    db = ThreadLocalSqlite(tmp_path / "t.sqlite", on_connect=lambda conn: seen.append(id(conn)))
    main = db.conn()
    assert db.conn() is main
    other = threading.Thread(target=db.conn)
    other.start()
    other.join()
    assert len(seen) == 2
    db.close()
    assert db.conn() is not main  # a new connection after close
    db.close()
