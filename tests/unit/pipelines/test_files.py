"""pipelines.files: the one atomic write every layer uses."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pipelines.files import atomic_write, atomic_writer, remove_stale_temporaries


def test_replaces_content_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    atomic_write(target, "old")
    assert atomic_write(target, b"new") == target
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_a_function_writes_into_the_open_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write(target, lambda fh: fh.write(b"\x00\x01"))
    assert target.read_bytes() == b"\x00\x01"


def test_an_error_keeps_the_old_file_and_removes_the_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "offsets.json"
    atomic_write(target, "kept")
    with pytest.raises(RuntimeError), atomic_writer(target) as fh:
        fh.write(b"half")
        raise RuntimeError("disk gone")
    assert target.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["offsets.json"]


def test_mode_is_set_at_creation(tmp_path: Path) -> None:
    target = tmp_path / "signer.key"
    atomic_write(target, "0xsecret", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_dead_writers_temporary_file_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "commits").mkdir()
        left = tmp_path / "commits" / f".offsets.json.{dead.stdout.strip()}-0a1b2c3d.tmp"
        working = tmp_path / f".offsets.json.{live.pid}-0a1b2c3d.tmp"
        other = tmp_path / ".seg-1.parquet.tmp"  # not the writer's naming: someone else's to handle
        for path in (left, working, other):
            path.write_bytes(b"partial")
        assert remove_stale_temporaries(tmp_path) == 1
        assert not left.exists() and working.exists() and other.exists()
    finally:
        live.kill()
        live.wait()
