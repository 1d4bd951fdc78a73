"""Atomic file writes: a reader sees the old file or the new one, never a part of either.

Every layer replaces its small state files (offsets, manifests, checkpoints,
deployment records, keys) the same way, through :func:`atomic_write`:

1. the bytes go to a hidden temporary file in the target's own directory
   (``.<name>.<pid>-<random>.tmp``, so a rename never crosses a file system and
   two writers never share a temporary file);
2. the file is flushed and fsynced;
3. it is renamed over the target (:func:`os.replace`, atomic on POSIX);
4. the directory is fsynced, so the rename itself survives a power cut.

When this returns, the new content is durable under the target's name.  On an
error the temporary file is removed and the target is untouched; a writer killed
mid-write (``kill -9``, power cut) leaves its temporary file behind, which
:func:`remove_stale_temporaries` deletes at the next start.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "atomic_write",
    "atomic_writer",
    "disk_full",
    "fsync_dir",
    "process_alive",
    "remove_stale_temporaries",
    "secret_file",
]

_TEMPORARY = re.compile(r"^\..+\.(?P<pid>[0-9]+)-[0-9a-f]{8}\.tmp$")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory ``path`` (a rename into it, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | os.PathLike[str], *, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A binary file whose content replaces ``path`` atomically and durably when the block ends.

    The parent directory is created if missing; ``mode`` is the new file's permission
    bits (before the umask), given at creation so a secret is never readable by others.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def durable_replace(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Move a finished file written by another library (a DuckDB database...) into place durably:
    its content on disk first, then the rename, then the directory entry."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    fsync_dir(Path(target).parent)
    return Path(target)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str | Callable[[BinaryIO], object],
    *,
    encoding: str = "utf-8",
    mode: int = 0o666,
) -> Path:
    """Replace ``path`` with ``data`` atomically and durably (see the module's steps); returns the path.

    ``data`` is bytes, text (encoded with ``encoding``) or a function that writes to the
    open binary file (e.g. ``lambda fh: pq.write_table(table, fh)``).
    """
    with atomic_writer(path, mode=mode) as fh:
        if isinstance(data, bytes):
            fh.write(data)
        elif isinstance(data, str):
            fh.write(data.encode(encoding))
        else:
            data(fh)
    return Path(path)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) has no room left."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def secret_file(path: str | os.PathLike[str], make: Callable[[], str], what: str) -> str:
    """The secret kept in ``path`` (stripped text), created with ``make()`` on first use.

    Created exclusively, mode 0600, in a directory made 0700: of two processes
    starting at once, one writes it and both read the same secret.  A file that
    others may read is refused (``PermissionError`` naming ``what`` and the fix).
    """
    target = Path(path)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first
            pass
        else:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(make() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
    if os.name == "posix" and target.stat().st_mode & 0o077:
        raise PermissionError(f"{what} file {target} is readable by others; run: chmod 600 {target}")
    return target.read_text(encoding="ascii").strip()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a lock's or a temporary file's owner); another user's counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_stale_temporaries(root: str | os.PathLike[str], *, recursive: bool = True) -> int:
    """Delete the temporary files :func:`atomic_writer` left under ``root`` when their writer died.

    Only files named as the writer names them, and only when the process that
    wrote them is gone (a live writer's temporary file is its work in progress);
    returns how many were removed.
    """
    base = Path(root)
    if not base.is_dir():
        return 0
    removed = 0
    for path in base.rglob(".*.tmp") if recursive else base.glob(".*.tmp"):
        found = _TEMPORARY.match(path.name)
        if found and int(found["pid"]) != os.getpid() and not process_alive(int(found["pid"])):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
