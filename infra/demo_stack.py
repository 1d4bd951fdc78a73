"""The demo's own components: settings on free ports under one data directory, start and stop.

A demo never touches a developer's broker, chain node or data: everything
lives under ``<data_dir>/demo`` (wiped at each run) on ports the kernel says
are free.  ``pcc demo --keep-running`` leaves the broker, the chain node and
the serving API running; their settings are written to ``<demo dir>/pcc.toml``
so ``pcc --config <demo dir>/pcc.toml ...`` and ``pcc demo down`` find them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from infra.procs import free_ports, terminate_group
from pipelines.errors import PccStateError
from pipelines.settings import Settings, load_settings

CHAIN_KIND = "anvil"
CONFIG_NAME = "pcc.toml"
SERVE_PID = "serve.pid"


def demo_settings(base: Settings, data_dir: Path | None = None) -> Settings:
    """Settings for a demo stack under ``data_dir`` (default ``<base data_dir>/demo``) on free ports.

    The Kafka jars are shared with the developer's own broker (``<base data_dir>/kafka/libs``),
    so a second demo downloads nothing.
    """
    data = (data_dir or base.data_dir / "demo").resolve()
    kafka_port, controller, chain_port, api_port = free_ports(4)
    libs = base.kafka.libs_dir or (base.kafka.home or base.data_dir / "kafka") / "libs"
    return base.model_copy(
        update={
            "data_dir": data,
            "kafka": base.kafka.model_copy(
                update={
                    "bootstrap": f"127.0.0.1:{kafka_port}",
                    "controller_port": controller,
                    "home": None,
                    "libs_dir": Path(libs).resolve(),
                }
            ),
            "ledger": base.ledger.model_copy(
                update={
                    "rpc_url": f"http://127.0.0.1:{chain_port}",
                    "chain": CHAIN_KIND,
                    "deployer_key": None,
                    "anchor_key": None,
                    "manifest": None,
                }
            ),
            "vault": base.vault.model_copy(update={"path": None, "key_file": None}),
            "batch": base.batch.model_copy(update={"master_dataset": None}),
            "serving": base.serving.model_copy(update={"port": api_port, "signing_key": None}),
        }
    )


def write_config(settings: Settings) -> Path:
    """The demo's settings as a TOML file for ``pcc --config`` (only what differs from the defaults)."""

    def q(value: object) -> str:
        return json.dumps(str(value))

    k, led, srv = settings.kafka, settings.ledger, settings.serving
    text = (
        "# Settings of the demo stack (written by pcc demo). Use: pcc --config THIS_FILE ...\n"
        f"data_dir = {q(settings.data_dir)}\n\n"
        f"[kafka]\nbootstrap = {q(k.bootstrap)}\ncontroller_port = {k.controller_port}\n"
        f"libs_dir = {q(k.libs_dir)}\ntopic_prefix = {q(k.topic_prefix)}\n\n"
        f"[ledger]\nrpc_url = {q(led.rpc_url)}\nchain = {q(led.chain)}\n\n"
        f"[serving]\nhost = {q(srv.host)}\nport = {srv.port}\n"
    )
    path = settings.data_dir / CONFIG_NAME
    path.write_text(text, encoding="utf-8")
    return path


def chain_dir(settings: Settings) -> Path:
    return settings.data_dir / "chain"


def start_broker(settings: Settings, say: object = None) -> None:
    from infra.kafka import Broker, ensure_topics

    Broker(settings).start(wait=True, timeout=180.0, progress=say)  # type: ignore[arg-type]
    ensure_topics(settings)


def start_chain(settings: Settings) -> str:
    from infra.chain import node

    return node.start(CHAIN_KIND, node.local_port(settings.ledger.rpc_url), chain_dir(settings)).url


def start_api_process(settings: Settings, config_file: Path) -> int:
    """``pcc serve`` on the demo's settings, detached (its own session), for ``--keep-running``.

    The serving layer offers its long-running server only as the ``pcc serve``
    command; the demo's own queries use the library in-process.
    """
    log = settings.data_dir / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCC__") and k != "PCC_CONFIG"}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli.main", "--config", str(config_file), "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    (settings.data_dir / SERVE_PID).write_text(str(proc.pid), encoding="utf-8")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PccStateError(f"pcc serve exited with code {proc.returncode} (log: {log})")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", settings.serving.port)) == 0:
                return proc.pid
        time.sleep(0.2)
    raise PccStateError(f"pcc serve did not listen on port {settings.serving.port} within 60 s (log: {log})")


def stop_stack(settings: Settings) -> list[str]:
    """Stop the serving API, the chain node and the broker of a demo stack; says what it stopped."""
    from infra.chain import node
    from infra.kafka import Broker

    stopped = []
    pid_file = settings.data_dir / SERVE_PID
    if pid_file.exists():
        terminate_group(int(pid_file.read_text().strip()))
        pid_file.unlink(missing_ok=True)
        stopped.append("serving API")
    if node.stop(chain_dir(settings), CHAIN_KIND) is not None:
        stopped.append("chain node")
    broker = Broker(settings)
    if broker.pid() is not None:
        if not broker.stop(timeout=30):
            broker.kill()
        stopped.append("Kafka broker")
    return stopped


def stop_demo_dir(demo_dir: Path) -> list[str]:
    """Stop whatever a previous ``--keep-running`` demo under ``demo_dir`` left running."""
    config = demo_dir / CONFIG_NAME
    if not config.exists():
        return []
    return stop_stack(load_settings(config))


def reset_dir(demo_dir: Path) -> list[str]:
    """Stop a previous demo's components, then wipe its directory (re-running is idempotent)."""
    stopped = stop_demo_dir(demo_dir)
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True, exist_ok=True)
    return stopped
