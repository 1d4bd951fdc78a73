"""Start and stop a Spark standalone cluster (one master, one or more workers) on 127.0.0.1.

pyspark's wheel ships ``bin/spark-class`` but not ``sbin/start-master.sh``,
so the master and the worker are started as ``spark-class
org.apache.spark.deploy.master.Master`` / ``...worker.Worker`` processes,
each in its own process group so that :meth:`StandaloneCluster.stop` ends
exactly what it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import PccStateError, PccTransientError


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PccStateError(f"Spark process exited with {proc.returncode}; see {log}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise PccTransientError(f"Spark did not listen on {host}:{port} within {timeout:.0f}s; see {log}")


@dataclass
class StandaloneCluster:
    """A master on ``spark://host:port`` and ``workers`` workers, each with ``cores`` and ``memory``."""

    work_dir: Path
    host: str = "127.0.0.1"
    port: int = 7077
    cores: int = 1
    memory: str = "1g"
    workers: int = 1
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"spark://{self.host}:{self.port}"

    def _spawn(self, name: str, cls: str, *args: str) -> subprocess.Popen[bytes]:
        home = spark_home()
        log = self.work_dir / f"{name}.log"
        env = {
            **os.environ,
            "SPARK_HOME": str(home),
            "SPARK_LOCAL_IP": self.host,
            "SPARK_LOG_DIR": str(self.work_dir),
            "SPARK_WORKER_DIR": str(self.work_dir / "work"),
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_NO_DAEMONIZE": "1",
        }
        with open(log, "ab") as out:
            return subprocess.Popen(
                [str(home / "bin" / "spark-class"), cls, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def start(self, timeout: float = 90.0) -> str:
        """Start the master and the workers; return the master URL once every worker has registered."""
        if self._procs:
            raise PccStateError(f"the cluster {self.url} is already started")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            if s.connect_ex((self.host, self.port)) == 0:
                raise PccStateError(f"{self.host}:{self.port} is already in use (another Spark master?)")
        master = self._spawn(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host", self.host, "--port", str(self.port), "--webui-port", "0",
        )  # fmt: skip
        self._procs.append(master)
        _wait_port(self.host, self.port, timeout, master, self.work_dir / "master.log")
        started: list[tuple[subprocess.Popen[bytes], Path]] = []
        for n in range(1, self.workers + 1):
            name = "worker" if self.workers == 1 else f"worker-{n}"
            worker = self._spawn(
                name,
                "org.apache.spark.deploy.worker.Worker",
                "--host", self.host, "--cores", str(self.cores), "--memory", self.memory,
                "--webui-port", "0", "--work-dir", str(self.work_dir / name), self.url,
            )  # fmt: skip
            self._procs.append(worker)
            started.append((worker, self.work_dir / f"{name}.log"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for worker, log in started:
                if worker.poll() is not None:
                    raise PccStateError(f"the Spark worker exited with {worker.returncode}; see {log}")
            if all(
                log.exists() and "Successfully registered with master" in log.read_text(errors="replace")
                for _, log in started
            ):
                return self.url
            time.sleep(0.5)
        self.stop()
        raise PccTransientError(
            f"the Spark workers did not all register with {self.url} within {timeout:.0f}s"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the worker, then the master (their whole process groups)."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self._procs.clear()


def main() -> None:  # pragma: no cover - manual use: python -m infra.spark.cluster DIR
    cluster = StandaloneCluster(Path(sys.argv[1] if len(sys.argv) > 1 else ".pcc/spark-cluster"))
    print(cluster.start(), flush=True)
    try:
        signal.pause()
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
