"""The local Kafka broker: one JVM, KRaft combined broker + controller, on 127.0.0.1.

``Broker(settings).start()`` fetches the jars on first use, formats the
storage on first start (the cluster id is kept in ``data/meta.properties``),
launches ``kafka.Kafka`` detached from the caller and waits until the broker
answers a Kafka API request.  ``stop()`` asks it to shut down (SIGTERM) and
kills it after a timeout; ``kill()`` is a crash (SIGKILL, the PID file stays
behind like after a real crash).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from infra.kafka.config import (
    LOG4J2_CONFIG,
    BrokerPaths,
    NodeRole,
    heap_option,
    local_port,
    parse_bootstrap,
    render_properties,
)
from infra.kafka.errors import BrokerStateError
from infra.kafka.jars import Progress, classpath, ensure_jars
from infra.procs import alive
from pipelines.settings import Settings

MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"

#: JVM flags for a small shared machine: a serial collector, C1 only (starts ~40 % faster,
#: plenty for a development broker), small thread stacks and code cache.
JVM_FLAGS = (
    "-Xms64m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:ReservedCodeCacheSize=48m",
    "-Xss512k",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Xlog:cds*=off",  # the class archive is an optimisation: keep its warnings out of console.log
)
#: class-data-sharing archive of the broker's classes, written on the first clean stop
CDS_ARCHIVE = "kafka.jsa"


@dataclass(frozen=True)
class BrokerStatus:
    """What ``pcc kafka status`` shows."""

    bootstrap: str
    pid: int | None
    port_open: bool
    ready: bool
    log_file: Path
    stale_pid: int | None = None  # a PID file naming a process that is gone

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass
class StartResult:
    status: BrokerStatus
    already_running: bool
    formatted: bool = False  # storage was formatted (first start of this home)
    fetched_jars: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Broker:
    """The project's own Kafka broker for ``settings`` (files under ``settings.kafka.home``)."""

    def __init__(self, settings: Settings, node: NodeRole | None = None) -> None:
        self.settings = settings
        self.node = node or NodeRole()
        self.paths = BrokerPaths.of(settings)
        self.bootstrap = settings.kafka.bootstrap
        self._proc: subprocess.Popen[bytes] | None = None

    # -- jars -------------------------------------------------------------------------------
    def ensure_jars(self, progress: Progress | None = None) -> bool:
        """Fetch the broker jars if they are not cached yet; True if they were fetched."""
        return ensure_jars(self.paths.libs, progress=progress)

    # -- life cycle -------------------------------------------------------------------------
    def start(
        self, wait: bool = True, timeout: float = 120.0, progress: Progress | None = None
    ) -> StartResult:
        """Start the broker unless it already runs; with ``wait``, return once it answers."""
        began = time.monotonic()
        port = local_port(self.settings)
        heap = heap_option(self.settings)
        notes: list[str] = []
        pid = self.pid()
        if pid is not None:
            if wait:
                self.wait_ready(timeout)
            notes.append(f"the broker is already running (pid {pid}) at {self.bootstrap}")
            return StartResult(self.status(), already_running=True, notes=notes)
        stale = self._read_pid_file()
        if stale is not None or self.paths.pid_file.exists():
            self.paths.pid_file.unlink(missing_ok=True)
            notes.append(f"removed a stale PID file {self.paths.pid_file} (pid {stale} is not running)")
        for p, what in ((port, "bootstrap"), (self.settings.kafka.controller_port, "controller")):
            if not _port_free(p):
                raise BrokerStateError(
                    f"port {p} on 127.0.0.1 ({what} port of the Kafka broker) is already in use by another "
                    "process: stop it, or pick free ports with PCC__KAFKA__BOOTSTRAP=127.0.0.1:<port> and "
                    "PCC__KAFKA__CONTROLLER_PORT"
                )
        fetched = self.ensure_jars(progress)
        for d in (self.paths.home, self.paths.data, self.paths.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.paths.properties.write_text(
            render_properties(self.settings, self.paths, self.node), encoding="utf-8"
        )
        formatted = self._format_storage(progress)
        if progress:
            progress(f"starting the Kafka broker on 127.0.0.1:{port} (log: {self.paths.server_log})")
        self._launch(heap)
        if wait:
            try:
                self.wait_ready(timeout)
            except BrokerStateError:
                self.stop(timeout=10)
                raise
        return StartResult(
            self.status(),
            already_running=False,
            formatted=formatted,
            fetched_jars=fetched,
            seconds=time.monotonic() - began,
            notes=notes,
        )

    def stop(self, timeout: float = 30.0) -> bool:
        """Shut the broker down cleanly (SIGTERM), SIGKILL after ``timeout``; False if it was not running."""
        pid = self.pid()
        if pid is None:
            self.paths.pid_file.unlink(missing_ok=True)
            return False
        _signal(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            _signal(pid, signal.SIGKILL)
            self._wait_gone(pid, 10.0)
        self.paths.pid_file.unlink(missing_ok=True)
        self._adopt_class_archive()
        return True

    def kill(self) -> bool:
        """Crash the broker (SIGKILL); the PID file stays, as after a real crash."""
        pid = self.pid()
        if pid is None:
            return False
        _signal(pid, signal.SIGKILL)
        self._wait_gone(pid, 10.0)
        return True

    def status(self, timeout: float = 3.0) -> BrokerStatus:
        pid = self.pid()
        stale = self._read_pid_file() if pid is None else None
        host, port = parse_bootstrap(self.bootstrap)
        port_open = _port_open(host, port)
        ready = port_open and api_ready(self.bootstrap, timeout)
        return BrokerStatus(self.bootstrap, pid, port_open, ready, self.paths.server_log, stale)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the broker answers a Kafka API request; a clear error if it dies or times out."""
        deadline = time.monotonic() + timeout
        host, port = parse_bootstrap(self.bootstrap)
        while True:
            pid = self.pid()
            if pid is None:
                code = self._proc.poll() if self._proc is not None else None
                raise BrokerStateError(
                    "the Kafka broker exited during start-up"
                    + (f" (exit status {code})" if code is not None else "")
                    + f"; see {self.paths.server_log} and "
                    f"{self.paths.console_log}:\n{self.log_tail()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerStateError(
                    f"the Kafka broker (pid {pid}) did not answer on {self.bootstrap} within {timeout:.0f}s; "
                    f"see {self.paths.server_log}"
                )
            if _port_open(host, port) and api_ready(self.bootstrap, min(left, 5.0)):
                return
            time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        out: list[str] = []
        for f in (self.paths.console_log, self.paths.server_log):
            if f.is_file():
                text = f.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                if text:
                    out += [f"--- {f.name}", *text]
        return "\n".join(out)

    # -- process bookkeeping ----------------------------------------------------------------
    def pid(self) -> int | None:
        """Pid of this home's running broker, or None (a PID file of a dead process counts as None)."""
        pid = self._read_pid_file()
        if pid is None or not self._alive(pid) or not self._is_our_broker(pid):
            return None
        return pid

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None  # our child: keeps its exit status for error messages
        return alive(pid)

    def _read_pid_file(self) -> int | None:
        try:
            return int(self.paths.pid_file.read_text(encoding="utf-8").strip())
        except (FileNotFoundError, ValueError):
            return None

    def _is_our_broker(self, pid: int) -> bool:
        """Guards against a reused pid: the process must run kafka.Kafka with this home's properties."""
        if self._proc is not None and self._proc.pid == pid:
            return True  # launched by this object
        cmdline = Path(f"/proc/{pid}/cmdline")
        if not cmdline.parent.exists():  # no procfs: trust the PID file
            return True
        for _ in range(20):
            try:
                raw = cmdline.read_bytes()
            except OSError:
                return False
            if raw:
                args = raw.split(b"\0")
                return MAIN_CLASS.encode() in args and str(self.paths.properties).encode() in args
            time.sleep(0.05)  # the java launcher may be between two exec()s: cmdline reads empty
        return True

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    # -- start-up steps ---------------------------------------------------------------------
    def _java(self) -> list[str]:
        return [
            "java",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            f"-Dkafka.logs.dir={self.paths.logs}",
            "-cp",
            classpath(self.paths.libs),
        ]

    def _format_storage(self, progress: Progress | None) -> bool:
        if (self.paths.data / "meta.properties").is_file():
            return False
        if progress:
            progress(f"formatting the broker storage in {self.paths.data}")
        cmd = [
            *self._java(),
            STORAGE_TOOL,
            "format",
            "--cluster-id",
            self.node.cluster_id or new_cluster_id(),
            "--config",
            str(self.paths.properties),
            "--ignore-formatted",
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.paths.home)
        except FileNotFoundError:
            raise BrokerStateError(
                "java (17 or newer) is needed to run the Kafka broker; none is on PATH"
            ) from None
        if done.returncode != 0:
            raise BrokerStateError(
                f"formatting the Kafka storage in {self.paths.data} failed (exit {done.returncode}):\n"
                + "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            )
        return True

    def _launch(self, heap: str) -> None:
        cds = self._class_archive_flag()
        cmd = [
            *self._java()[:1],
            heap,
            *JVM_FLAGS,
            cds,
            *self._java()[1:],
            MAIN_CLASS,
            str(self.paths.properties),
        ]
        with self.paths.console_log.open("ab") as console:
            console.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
            console.flush()
            try:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    cwd=self.paths.home,
                    start_new_session=True,  # outlives `pcc kafka up`, ignores the terminal's Ctrl-C
                )
            except FileNotFoundError:
                raise BrokerStateError(
                    "java (17 or newer) is needed to run the Kafka broker; none is on PATH"
                ) from None
        self.paths.pid_file.write_text(f"{self._proc.pid}\n", encoding="utf-8")

    def _class_archive_flag(self) -> str:
        archive = self.paths.libs / CDS_ARCHIVE
        if archive.is_file():
            return f"-XX:SharedArchiveFile={archive}"
        return f"-XX:ArchiveClassesAtExit={self._pending_archive()}"

    def _pending_archive(self) -> Path:
        tag = hashlib.sha256(str(self.paths.home).encode()).hexdigest()[:12]
        return self.paths.libs / f"{CDS_ARCHIVE}.{tag}.tmp"

    def _adopt_class_archive(self) -> None:
        """After a clean stop, keep the class archive the JVM wrote (starts later brokers faster)."""
        pending = self._pending_archive()
        if not pending.is_file():
            return
        final = self.paths.libs / CDS_ARCHIVE
        if final.is_file():
            pending.unlink(missing_ok=True)
        else:
            os.replace(pending, final)


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, not starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def api_ready(bootstrap: str, timeout: float = 3.0) -> bool:
    """True if a broker at ``bootstrap`` answers a DescribeCluster request."""
    from kafka.admin import KafkaAdminClient

    ms = max(int(timeout * 1000), 200)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="pcc-broker-probe",
            bootstrap_timeout_ms=ms,
            request_timeout_ms=ms,
            reconnect_backoff_max_ms=200,
        )
    except Exception:
        return False
    try:
        admin.describe_cluster()
        return True
    except Exception:
        return False
    finally:
        admin.close()


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
