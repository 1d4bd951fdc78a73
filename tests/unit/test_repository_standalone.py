"""The repository stands alone: a clone anywhere has everything its tests and benchmarks read.

Two checks.  While tests run, the ``tests.fixtures.standalone`` plugin audits every
file the process opens or lists and fails the session on a path outside the
repository (tested here on a made-up layout).  And the source of the tests and
benchmarks is scanned for paths that climb out of the root (``Path(__file__)``
parents past it, ``..`` in a literal): that also covers code a run did not reach,
and a clone that itself lies in a temporary directory.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from tests.fixtures.standalone import AUDIT, ROOT, SESSION, OutsideReads, default_allowed

SCANNED = ("tests", "bench")
_PARENT_LITERAL = re.compile(r"(^|[/\\])\.\.([/\\]|$)")
_SAME_PATH_CALLS = {"Path", "PurePath", "abspath", "realpath", "normpath", "fspath", "str"}
_SAME_PATH_METHODS = {"resolve", "absolute", "expanduser"}


def _levels(node: ast.AST) -> int | None:
    """How many directories above its own file an expression built from ``__file__`` climbs, else None."""
    if isinstance(node, ast.Name):
        return 0 if node.id == "__file__" else None
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        inner = _levels(node.value)
        return None if inner is None else inner + 1
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "parents"
    ):
        inner = _levels(node.value.value)
        if inner is None:
            return None
        k = node.slice.value if isinstance(node.slice, ast.Constant) else None
        return inner + (k + 1 if isinstance(k, int) and k >= 0 else 99)  # parents[-1] is "/"
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if isinstance(func, ast.Attribute) and name in _SAME_PATH_METHODS and not node.args:
            return _levels(func.value)
        if node.args:
            inner = _levels(node.args[0])
            if inner is not None and name == "dirname":
                return inner + 1
            if inner is not None and name in _SAME_PATH_CALLS:
                return inner
    return None


def climbs_out(source: str, relative: Path) -> list[str]:
    """Where ``source`` (the file at ``relative`` under the root) builds a path outside the root."""
    depth = len(relative.parts)  # e.g. tests/unit/x.py: three steps up from the file is the root
    found = []
    for node in ast.walk(ast.parse(source)):
        levels = _levels(node)
        if levels is not None and levels > depth:
            found.append(
                f"{relative}:{node.lineno}: {ast.unparse(node)} climbs {levels - depth} above the root"
            )
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _PARENT_LITERAL.search(node.value)
        ):
            found.append(f"{relative}:{node.lineno}: {node.value!r} names a parent directory")
    return found


def test_no_test_or_benchmark_source_builds_a_path_outside_the_repository() -> None:
    files = sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))
    assert len(files) > 40
    found = [hit for p in files for hit in climbs_out(p.read_text(encoding="utf-8"), p.relative_to(ROOT))]
    assert found == []


@pytest.mark.parametrize(
    ("source", "outside"),
    [
        ('V = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"', True),
        ("V = Path(__file__).resolve().parents[3]", True),
        ("V = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))", True),
        ('V = ROOT / "../shared/vectors"', True),
        ('V = Path("..") / "shared"', True),
        ('V = Path(__file__).resolve().parents[1] / "vectors"', False),
        ("V = Path(__file__).parent.parent.parent", False),
        ('V = "a..b/c.json"', False),
    ],
)
def test_the_source_scan_finds_paths_above_the_root(source: str, outside: bool) -> None:
    assert bool(climbs_out(source, Path("tests/unit/test_x.py"))) is outside


def test_the_audit_records_reads_outside_the_root(tmp_path: Path) -> None:
    repo, shared, home = tmp_path / "repo", tmp_path / "shared", tmp_path / "home"
    for d in (repo / "tests", shared / "vectors", home / ".cache", home / "notes"):
        d.mkdir(parents=True)
    for f in (
        repo / "tests" / "v.json",
        shared / "vectors" / "v.json",
        home / ".cache" / "c",
        home / "notes" / "n",
    ):
        f.write_text("{}")
    watcher = OutsideReads(repo, allowed=(), home=str(home))
    with AUDIT.watching(watcher):
        (repo / "tests" / "v.json").read_text()
        sorted(repo.rglob("*.json"))
        (home / ".cache" / "c").read_text()
        os.listdir(shared)
        (shared / "vectors" / "v.json").read_bytes()
        with open(os.fsencode(home / "notes" / "n"), "rb"):
            pass
        fd = os.open(home / "notes" / "n", os.O_RDONLY)
        with open(fd, closefd=True):  # a file descriptor: already seen when it was opened
            pass
    assert sorted(watcher.found) == sorted(
        str(p) for p in (shared, shared / "vectors" / "v.json", home / "notes" / "n")
    )
    assert set(watcher.found.values()) == {os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]}


def test_the_session_allows_temporary_and_system_places_not_siblings() -> None:
    session = OutsideReads(ROOT, default_allowed())
    for inside in (ROOT / "tests" / "vectors", Path(tempfile.gettempdir()) / "x", Path(sys.prefix) / "lib",
                   Path(os.__file__), Path("/proc/self/status"), Path("/dev/null"), Path("/etc/hosts")):  # fmt: skip
        assert not session.is_outside(inside), inside
    sibling = ROOT.parent / "shared" / "vectors"
    if not any(session.under(str(sibling), p) for p in session.allowed):  # a clone under /tmp: see module doc
        assert session.is_outside(sibling)


def test_the_session_is_audited() -> None:
    assert AUDIT.installed and SESSION in AUDIT.watchers


def test_a_watcher_of_the_audit_itself_sees_its_own_thread_only(tmp_path: Path) -> None:
    """Another thread (a server an earlier test left running) reading meanwhile is not this test's read;
    the session's watcher still sees every thread."""
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    watcher = OutsideReads(tmp_path / "repo", allowed=())
    with AUDIT.watching(watcher):
        reader = threading.Thread(target=outside.read_text)
        reader.start()
        reader.join()
        assert watcher.found == {}
        outside.read_text()
    assert list(watcher.found) == [str(outside)]
