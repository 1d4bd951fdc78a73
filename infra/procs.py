"""Process and port helpers shared by the components ``infra`` starts (broker, chain node, API)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from contextlib import ExitStack
from pathlib import Path


def alive(pid: int) -> bool:
    """True while process ``pid`` runs (an exited child is reaped; a zombie counts as gone)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs (zombies do not count; the leader is reaped)."""
    alive(pgid)  # reap the leader if it is our exited child
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return True
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def terminate_group(pid: int, grace_s: float = 15.0) -> None:
    """SIGTERM the process group led by ``pid``, wait up to ``grace_s`` until all of it exited, then SIGKILL it.

    The whole group, not only its leader: a launcher (the npm ``anvil`` script) exits at once on
    SIGTERM while the program it started is still writing its state and holds its port.
    """
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nobody listens on right now (127.0.0.1)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
