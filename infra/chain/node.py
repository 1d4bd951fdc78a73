"""Start, stop and inspect a local chain node: anvil (default) or the Hardhat 2 node.

Both come from npm (``infra/chain/package.json``, installed into
``infra/chain/node_modules`` on first use) and listen on 127.0.0.1 only.  Each
node keeps a PID file, a log and (anvil) its state in ``state_dir``, so
``pcc chain down`` then ``pcc chain up`` keeps deployed contracts.  Both run the
``prague`` fork the contracts are compiled for, with chain id 31337 and the
well-known development accounts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from infra.chain.npm import ensure_npm_packages
from infra.procs import alive, terminate_group
from pipelines.errors import PccConfigError, PccStateError, PccValueError

CHAIN_DIR = Path(__file__).resolve().parent
HARDFORK = "prague"
CHAIN_ID = 31337
NodeKind = Literal["anvil", "hardhat"]
KINDS: tuple[str, ...] = ("anvil", "hardhat")
KEPT_STATES = 256  # block states an anvil node keeps in memory; none are written to disk


@dataclass(frozen=True)
class NodeInfo:
    kind: str
    pid: int
    port: int
    url: str
    log: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _pid_file(state_dir: Path, kind: str) -> Path:
    return state_dir / f"{kind}.pid"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port nobody listens on right now (for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rpc_chain_id(url: str, timeout_s: float = 2.0) -> int | None:
    """The node's chain id, or None when nothing answers JSON-RPC at ``url``."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(json.loads(resp.read())["result"], 16)
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        return None


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def local_port(rpc_url: str) -> int:
    """The port a local node listens on for ``ledger.rpc_url`` (the one chain endpoint setting).

    Refuses a URL that is not on this machine: ``pcc chain up`` only starts local nodes.
    """
    parts = urlsplit(rpc_url)
    if parts.scheme != "http" or parts.hostname not in LOCAL_HOSTS:
        raise PccConfigError(
            f"ledger.rpc_url is {rpc_url}: a local node is started only for http://127.0.0.1:PORT "
            "(or localhost); a remote endpoint is started by whoever runs it"
        )
    return parts.port or 80


def _command(kind: str, port: int, state_dir: Path) -> list[str]:
    modules = ensure_npm_packages(CHAIN_DIR)
    if kind == "anvil":
        return [
            str(modules / ".bin" / "anvil"),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--hardfork", HARDFORK,
            "--chain-id", str(CHAIN_ID),
            "--accounts", "10",
            "--state", str(state_dir / "anvil-state.json"),
            # Keep recent states in memory only: by default anvil writes every older
            # block's state under ~/.foundry/anvil/tmp (≈50 kB a block, gigabytes over a
            # test session, left behind when the node is killed).  Nothing here reads
            # state at an old block; event logs stay queryable from block 0.
            "--prune-history", str(KEPT_STATES),
            "--cache-path", str(state_dir / "cache"),
        ]  # fmt: skip
    return [
        str(modules / ".bin" / "hardhat"),
        "--config", str(CHAIN_DIR / "hardhat.config.cjs"),
        "node",
        "--hostname", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip


def status(state_dir: Path, kind: str = "anvil") -> NodeInfo | None:
    """The running node recorded in ``state_dir``; a stale PID file is removed."""
    pid_file = _pid_file(state_dir, kind)
    if not pid_file.is_file():
        return None
    try:
        info = NodeInfo(**json.loads(pid_file.read_text(encoding="utf-8")))
    except (ValueError, TypeError):
        pid_file.unlink(missing_ok=True)
        return None
    if not alive(info.pid):
        pid_file.unlink(missing_ok=True)
        return None
    return info


def start(kind: str, port: int, state_dir: Path, *, timeout_s: float = 90.0) -> NodeInfo:
    """Start a node and wait until it answers JSON-RPC; idempotent for the same node."""
    if kind not in KINDS:
        raise PccValueError(f"unknown chain node kind {kind!r}: expected one of {', '.join(KINDS)}")
    state_dir.mkdir(parents=True, exist_ok=True)
    running = status(state_dir, kind)
    if running is not None:
        if running.port != port:
            raise PccStateError(f"{kind} already runs on port {running.port} (pid {running.pid}), not {port}")
        return running
    if port_in_use(port):
        raise PccStateError(f"port {port} is already in use by another process: stop it or pick another port")
    log = state_dir / f"{kind}.log"
    env = dict(os.environ, HARDHAT_DISABLE_TELEMETRY_PROMPT="true", NO_COLOR="1")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            _command(kind, port, state_dir),
            cwd=CHAIN_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    info = NodeInfo(kind=kind, pid=proc.pid, port=port, url=url, log=str(log))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            raise PccStateError(f"{kind} exited with code {proc.returncode} at start: " + " | ".join(tail))
        if rpc_chain_id(url) == CHAIN_ID:
            _pid_file(state_dir, kind).write_text(info.to_json(), encoding="utf-8")
            return info
        time.sleep(0.2)
    terminate_group(proc.pid)
    raise PccStateError(f"{kind} did not answer on {url} within {timeout_s:.0f} s (log: {log})")


def stop(state_dir: Path, kind: str = "anvil") -> NodeInfo | None:
    """Stop the node recorded in ``state_dir`` (anvil saves its state first)."""
    info = status(state_dir, kind)
    if info is None:
        return None
    terminate_group(info.pid)
    _pid_file(state_dir, kind).unlink(missing_ok=True)
    return info
