"""The broker's jars: fetched once from Maven Central with ``mvn``, then reused.

The cache folder holds the jars of :data:`~infra.kafka.config.POM` and a
marker with the pom's hash; a changed pom (another Kafka version) refreshes
the cache.  Jars are copied into a temporary folder that is renamed into
place, so an interrupted download never leaves half a classpath behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from infra.kafka.config import POM
from infra.kafka.errors import BrokerStateError

MARKER = ".pcc-jars"
Progress = Callable[[str], None]


def pom_digest(pom: Path = POM) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def jars_ready(libs: Path, pom: Path = POM) -> bool:
    marker = libs / MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8").strip() == pom_digest(pom)


def classpath(libs: Path) -> str:
    return str(libs / "*")


def ensure_jars(libs: Path, pom: Path = POM, progress: Progress | None = None) -> bool:
    """Make sure ``libs`` holds the broker's jars; returns True if they had to be fetched."""
    if jars_ready(libs, pom):
        return False
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerStateError(
            "Maven (mvn) is needed once to fetch the Kafka broker jars from Maven Central: "
            f"install it (apt-get install maven) or put the jars of {pom} into {libs} "
            "(PCC__KAFKA__LIBS_DIR)"
        )
    if progress:
        progress(f"fetching the Kafka broker jars into {libs} (first use)")
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = libs.with_name(f"{libs.name}.tmp-{uuid.uuid4().hex[:8]}")
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise BrokerStateError(
                f"mvn could not fetch the Kafka jars of {pom} (exit {done.returncode}):\n{tail}"
            )
        if not any(staging.glob("kafka_2.13-*.jar")):
            raise BrokerStateError(f"mvn ran but no kafka_2.13 jar arrived in {staging}")
        (staging / MARKER).write_text(pom_digest(pom) + "\n", encoding="utf-8")
        _swap_into_place(staging, libs, pom)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if progress:
        progress(f"{sum(1 for _ in libs.glob('*.jar'))} jars in {libs}")
    return True


def _swap_into_place(staging: Path, libs: Path, pom: Path) -> None:
    if jars_ready(libs, pom):  # another process finished first
        return
    old = None
    if libs.exists():
        old = libs.with_name(f"{libs.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(libs, old)
    os.rename(staging, libs)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
