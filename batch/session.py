"""Where the batch layer checks for pyspark and starts its SparkSession.

pyspark and Great Expectations are the ``spark`` extra; without them every
batch command fails here with one message saying what to install
(:func:`require_pyspark`, :func:`require_gx`).  The other batch modules import
pyspark only for type checking or inside functions that receive a session or
a DataFrame made from one started here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.errors import SparkUnavailableError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_INSTALL_HINT = "install the spark extra: pip install 'pcc[spark]'"

#: The driver's log4j2 configuration: warnings and errors, less those a user cannot act on.
LOG4J2_CONFIG = Path(__file__).with_name("log4j2.properties")
#: The address the driver binds to and advertises (a local session, or a client of a local cluster).
DRIVER_HOST = "127.0.0.1"


def require_pyspark() -> Any:
    """Import and return the ``pyspark`` module, or say which extra to install."""
    try:
        import pyspark
        import pyspark.sql
    except ImportError as exc:
        raise SparkUnavailableError(f"the batch layer needs pyspark ({exc}); {_INSTALL_HINT}") from None
    return pyspark


def require_gx() -> Any:
    """Import and return ``great_expectations``, or say which extra to install."""
    try:
        import great_expectations as gx
    except ImportError as exc:
        raise SparkUnavailableError(
            f"the batch audit needs great_expectations ({exc}); {_INSTALL_HINT}"
        ) from None
    return gx


def spark_conf(master: str, driver_memory: str = "2g", shuffle_partitions: int = 8) -> dict[str, str]:
    """The Spark configuration every batch session uses (UTC, Arrow, no UI)."""
    return {
        "spark.master": master,
        "spark.app.name": "pcc-batch",
        "spark.driver.memory": driver_memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MILLIS",
        "spark.sql.sources.partitionOverwriteMode": "static",
        "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
        # list the master's files on the driver: a parallel listing job costs seconds per run
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.bindAddress": DRIVER_HOST,
        "spark.driver.host": DRIVER_HOST,
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG4J2_CONFIG.as_uri()}",
        # the executors' Python is this interpreter (a virtualenv on every node of a local cluster)
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.executorEnv.PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }


#: What the JVM itself prints when Spark 4's launcher adds ``--add-modules=jdk.incubator.vector``
#: (on every start, before any log configuration applies): nothing a user can act on.
JVM_INCUBATOR_NOTICE = b"WARNING: Using incubator modules: jdk.incubator.vector"


def _start_driver_jvm(settings: dict[str, str]) -> None:
    """Start the driver's JVM (as ``getOrCreate`` would) with its stderr passed on line by line,
    less the JVM's incubator-module notice; every other line, warnings included, is kept."""
    import subprocess
    import threading

    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    if SparkContext._gateway is not None:
        return
    conf = SparkConf()
    for key, value in settings.items():
        conf.set(key, value)
    gateway = launch_gateway(conf, popen_kwargs={"stderr": subprocess.PIPE})
    SparkContext._gateway = gateway
    SparkContext._jvm = gateway.jvm
    stderr = gateway.proc.stderr

    def forward() -> None:
        out = getattr(sys.stderr, "buffer", None)
        for line in iter(stderr.readline, b""):
            if line.strip() == JVM_INCUBATOR_NOTICE:
                continue
            if out is not None:
                out.write(line)
                out.flush()
            else:
                sys.stderr.write(line.decode(errors="replace"))

    threading.Thread(target=forward, name="pcc-spark-stderr", daemon=True).start()


def get_spark(
    master: str = "local[*]",
    driver_memory: str = "2g",
    shuffle_partitions: int = 8,
    extra: dict[str, str] | None = None,
) -> SparkSession:
    """Start (or reuse) the process's SparkSession.

    Spark allows one active session per driver process: if one exists (a
    test session, a notebook) it is reused as is and ``master`` is ignored.
    """
    require_pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Without it the JVM looks the machine's hostname up, and where that resolves to a loopback
    # address (most laptops and VMs) warns about it on every start; the driver binds here anyway.
    os.environ.setdefault("SPARK_LOCAL_IP", DRIVER_HOST)
    settings = {**spark_conf(master, driver_memory, shuffle_partitions), **(extra or {})}
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        _start_driver_jvm(settings)
        spark = builder.getOrCreate()
    except Exception as exc:  # the JVM did not start or the master is unreachable
        from batch.errors import BatchError

        raise BatchError(f"could not start Spark against {master}: {exc}") from exc
    spark.sparkContext.setLogLevel("ERROR")
    return spark
