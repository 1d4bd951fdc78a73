"""Where the local broker keeps its files, and its rendered ``server.properties``.

Layout under ``settings.kafka.home`` (default ``<data_dir>/kafka``)::

    libs/                 broker jars (settings.kafka.libs_dir overrides)
    data/                 log.dirs: topic partitions and the KRaft metadata log
    logs/server.log       the broker's log (log4j2, rolled at 10 MB)
    logs/console.log      the JVM's own stdout/stderr (start-up failures land here)
    server.properties     rendered from the template beside this module
    broker.pid            pid of the running broker
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from infra.kafka.errors import KafkaConfigError
from pipelines.settings import Settings

KAFKA_VERSION = "4.3.1"
PACKAGE_DIR = Path(__file__).resolve().parent
POM = PACKAGE_DIR / "pom.xml"
LOG4J2_CONFIG = PACKAGE_DIR / "log4j2.xml"
PROPERTIES_TEMPLATE = PACKAGE_DIR / "server.properties"

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
#: partitions of __consumer_offsets and __transaction_state (Kafka's default of 50 is for clusters)
INTERNAL_PARTITIONS = 4
_HEAP = re.compile(r"^[1-9][0-9]*[kKmMgG]$")


@dataclass(frozen=True)
class NodeRole:
    """This node's place in its KRaft quorum: the single broker by default, or one node of a cluster."""

    node_id: int = 1
    #: ``id@127.0.0.1:controller_port`` of every voter; None: this node alone
    voters: str | None = None
    #: how many nodes hold each partition (the cluster's size, at most 3)
    replication: int = 1
    #: shared by every node of a cluster (its storage is formatted with it); None: a fresh one
    cluster_id: str | None = None


def min_insync(replication: int) -> int:
    """Replicas a write needs (``acks=all``): 2 of 3, so one node may be down; 1 below 3."""
    return 2 if replication >= 3 else 1


@dataclass(frozen=True)
class BrokerPaths:
    home: Path
    libs: Path
    data: Path
    logs: Path
    server_log: Path
    console_log: Path
    properties: Path
    pid_file: Path

    @classmethod
    def of(cls, settings: Settings) -> BrokerPaths:
        home = (settings.kafka.home or settings.path("kafka")).expanduser().absolute()
        libs = (settings.kafka.libs_dir or home / "libs").expanduser().absolute()
        logs = home / "logs"
        return cls(
            home=home,
            libs=libs,
            data=home / "data",
            logs=logs,
            server_log=logs / "server.log",
            console_log=logs / "console.log",
            properties=home / "server.properties",
            pid_file=home / "broker.pid",
        )


def parse_bootstrap(bootstrap: str) -> tuple[str, int]:
    """``host:port`` of the first bootstrap server; a clear error for anything else."""
    first = bootstrap.split(",")[0].strip()
    host, sep, port = first.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise KafkaConfigError(
            f"kafka.bootstrap (PCC__KAFKA__BOOTSTRAP) must be host:port, got {bootstrap!r}"
        )
    return host, int(port)


def local_port(settings: Settings) -> int:
    """The port the local broker listens on; refuses a bootstrap that names another machine."""
    bootstrap = settings.kafka.bootstrap
    host, port = parse_bootstrap(bootstrap)
    if "," in bootstrap or host not in LOCAL_HOSTS:
        raise KafkaConfigError(
            f"kafka.bootstrap is {bootstrap!r}: that is an external cluster, which the local broker "
            "does not run; use it as it is (no `pcc kafka up`) or set PCC__KAFKA__BOOTSTRAP=127.0.0.1:<port>"
        )
    if settings.kafka.controller_port == port:
        raise KafkaConfigError(
            f"kafka.controller_port ({port}) must differ from the bootstrap port ({bootstrap})"
        )
    return port


def heap_option(settings: Settings) -> str:
    heap = settings.kafka.heap.strip()
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    if not _HEAP.match(heap) or int(heap[:-1]) * units[heap[-1].lower()] < 128:
        raise KafkaConfigError(
            f"kafka.heap (PCC__KAFKA__HEAP) must be a JVM size of at least 128m, like 512m or 1g, got {heap!r}"
        )
    return f"-Xmx{heap}"


def render_properties(settings: Settings, paths: BrokerPaths, node: NodeRole | None = None) -> str:
    """The broker's ``server.properties`` for these settings (and this node's role in a cluster)."""
    node = node or NodeRole()
    template = Template(PROPERTIES_TEMPLATE.read_text(encoding="utf-8"))
    return template.substitute(
        node_id=node.node_id,
        voters=node.voters or f"{node.node_id}@127.0.0.1:{settings.kafka.controller_port}",
        replication=node.replication,
        min_isr=min_insync(node.replication),
        port=local_port(settings),
        controller_port=settings.kafka.controller_port,
        log_dirs=str(paths.data),
        retention_ms=settings.kafka.retention_ms,
        internal_partitions=INTERNAL_PARTITIONS,
    )
