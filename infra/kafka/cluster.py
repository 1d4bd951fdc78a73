"""A local Kafka cluster: N KRaft nodes (broker and controller each) on loopback ports.

``pcc kafka up --brokers 3`` runs three JVMs from the same jars as the single
broker.  Each node is a :class:`~infra.kafka.broker.Broker` with its own home
(``<home>/node-<id>``), ports and :class:`~infra.kafka.config.NodeRole`; the
three form one static controller quorum and share one cluster id.  The layout
(node ids, ports, cluster id) is written to ``<home>/cluster.json`` on the first
start, so ``status``, ``down`` and a restart find the same cluster again.

Ports, by default, step by two from the settings' ports: with the default
bootstrap ``127.0.0.1:9092`` and controller port ``9093``, node 1 listens on
9092/9093, node 2 on 9094/9095, node 3 on 9096/9097.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from infra.kafka.broker import Broker, BrokerStatus, StartResult, api_ready, new_cluster_id
from infra.kafka.config import BrokerPaths, NodeRole, local_port
from infra.kafka.errors import BrokerStateError, KafkaConfigError
from infra.kafka.jars import Progress
from infra.kafka.topics import admin_client, replication_for
from pipelines.files import atomic_write
from pipelines.settings import Settings

LAYOUT_FILE = "cluster.json"
MAX_BROKERS = 9


@dataclass(frozen=True)
class NodeAddress:
    node_id: int
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class ClusterLayout:
    """What ``cluster.json`` holds: the nodes and the id their storage was formatted with."""

    cluster_id: str
    nodes: tuple[NodeAddress, ...]

    @property
    def voters(self) -> str:
        return ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)

    @property
    def bootstrap(self) -> str:
        """Every node's address: a client that knows them all reaches the cluster while any one is up."""
        return ",".join(n.bootstrap for n in self.nodes)

    def to_json(self) -> str:
        return json.dumps(
            {
                "cluster_id": self.cluster_id,
                "nodes": [
                    {"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port}
                    for n in self.nodes
                ],
            },
            indent=2,
        )

    @classmethod
    def read(cls, path: Path) -> ClusterLayout:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                cluster_id=str(raw["cluster_id"]),
                nodes=tuple(
                    NodeAddress(int(n["node_id"]), int(n["port"]), int(n["controller_port"]))
                    for n in raw["nodes"]
                ),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KafkaConfigError(f"{path}: not a readable cluster layout ({exc})") from None


def default_layout(settings: Settings, brokers: int) -> ClusterLayout:
    """``brokers`` nodes whose ports step by two from the settings' bootstrap and controller ports."""
    if not 1 < brokers <= MAX_BROKERS:
        raise KafkaConfigError(f"--brokers must be between 2 and {MAX_BROKERS} for a cluster, got {brokers}")
    # the first address: `PCC__KAFKA__BOOTSTRAP` may already list the cluster's nodes for its clients
    first = settings.kafka.model_copy(update={"bootstrap": settings.kafka.bootstrap.split(",")[0].strip()})
    port, controller = (
        local_port(settings.model_copy(update={"kafka": first})),
        settings.kafka.controller_port,
    )
    nodes = tuple(NodeAddress(i + 1, port + 2 * i, controller + 2 * i) for i in range(brokers))
    return layout_of(nodes)


def layout_of(nodes: tuple[NodeAddress, ...], cluster_id: str | None = None) -> ClusterLayout:
    """A layout for these nodes; refuses a port used twice or out of range."""
    ports = [p for n in nodes for p in (n.port, n.controller_port)]
    if len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
        raise KafkaConfigError(
            f"the cluster's ports collide or are out of range: {ports}; choose kafka.bootstrap and "
            "kafka.controller_port so that bootstrap + 2i and controller_port + 2i never meet"
        )
    return ClusterLayout(cluster_id or new_cluster_id(), nodes)


@dataclass
class ClusterStartResult:
    nodes: list[StartResult]
    bootstrap: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def already_running(self) -> bool:
        return all(r.already_running for r in self.nodes)

    @property
    def formatted(self) -> bool:
        return any(r.formatted for r in self.nodes)


class Cluster:
    """A local multi-node cluster under ``settings.kafka.home``; nodes are Brokers with their own homes."""

    def __init__(self, settings: Settings, layout: ClusterLayout) -> None:
        self.settings = settings
        self.home = BrokerPaths.of(settings).home
        self.layout = layout
        self.libs = BrokerPaths.of(settings).libs
        self.nodes: dict[int, Broker] = {n.node_id: self._broker(n) for n in layout.nodes}

    # -- finding or making one --------------------------------------------------------------
    @staticmethod
    def layout_file(settings: Settings) -> Path:
        return BrokerPaths.of(settings).home / LAYOUT_FILE

    @classmethod
    def load(cls, settings: Settings) -> Cluster | None:
        """The cluster whose layout lives in this home, or None (the home is a single broker's)."""
        path = cls.layout_file(settings)
        return cls(settings, ClusterLayout.read(path)) if path.is_file() else None

    @classmethod
    def create(
        cls, settings: Settings, brokers: int, nodes: tuple[NodeAddress, ...] | None = None
    ) -> Cluster:
        """The home's cluster; a new layout (default ports, or ``nodes``) if the home has none yet."""
        existing = cls.load(settings)
        if existing is not None:
            if len(existing.layout.nodes) != brokers:
                raise BrokerStateError(
                    f"{cls.layout_file(settings)} describes a cluster of {len(existing.layout.nodes)} brokers, "
                    f"not {brokers}: stop it (`pcc kafka down`) and remove {existing.home}, or use another "
                    "kafka.home"
                )
            return existing
        if (BrokerPaths.of(settings).data / "meta.properties").is_file():
            raise BrokerStateError(
                f"{BrokerPaths.of(settings).home} holds a single broker's data: a cluster needs a home of "
                "its own (PCC__KAFKA__HOME)"
            )
        return cls(settings, layout_of(nodes) if nodes else default_layout(settings, brokers))

    def _broker(self, node: NodeAddress) -> Broker:
        kafka = self.settings.kafka.model_copy(
            update={
                "bootstrap": node.bootstrap,
                "controller_port": node.controller_port,
                "home": self.home / f"node-{node.node_id}",
                "libs_dir": self.libs,
            }
        )
        role = NodeRole(
            node_id=node.node_id,
            voters=self.layout.voters,
            replication=replication_for(len(self.layout.nodes)),
            cluster_id=self.layout.cluster_id,
        )
        return Broker(self.settings.model_copy(update={"kafka": kafka}), role)

    # -- what clients use -------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return self.layout.bootstrap

    @property
    def client_settings(self) -> Settings:
        """The settings with a bootstrap naming every node (what producers and the speed layer should use)."""
        kafka = self.settings.kafka.model_copy(update={"bootstrap": self.bootstrap})
        return self.settings.model_copy(update={"kafka": kafka})

    def node(self, node_id: int) -> Broker:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KafkaConfigError(f"the cluster has nodes {sorted(self.nodes)}, not {node_id}") from None

    # -- life cycle -------------------------------------------------------------------------
    def start(
        self, wait: bool = True, timeout: float = 180.0, progress: Progress | None = None
    ) -> ClusterStartResult:
        """Start every node that is not running (all launched before any is waited for: the quorum
        needs a majority), then wait until the cluster reports all its brokers."""
        began = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        layout_path = self.home / LAYOUT_FILE
        if not layout_path.is_file():
            atomic_write(layout_path, self.layout.to_json())
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:  # storage formats run side by side
            results = list(
                pool.map(
                    lambda b: b.start(wait=False, timeout=timeout, progress=progress), self.nodes.values()
                )
            )
        if wait:
            try:
                self.wait_ready(timeout=max(timeout - (time.monotonic() - began), 1.0))
            except BrokerStateError:
                self.stop(timeout=10)
                raise
        notes = [n for r in results for n in r.notes]
        return ClusterStartResult(results, self.bootstrap, time.monotonic() - began, notes)

    def wait_ready(self, timeout: float = 180.0, brokers: int | None = None) -> None:
        """Block until every node answers and the cluster's metadata lists ``brokers`` (all) brokers."""
        deadline = time.monotonic() + timeout
        want = len(self.nodes) if brokers is None else brokers
        for b in self.nodes.values():
            b.wait_ready(max(deadline - time.monotonic(), 1.0))
        while True:
            seen = self.registered_brokers()
            if len(seen) >= want:
                return
            if time.monotonic() >= deadline:
                raise BrokerStateError(
                    f"the Kafka cluster at {self.bootstrap} lists brokers {sorted(seen)} after {timeout:.0f}s, "
                    f"expected {want}; see the nodes' logs under {self.home}"
                )
            time.sleep(0.2)

    def registered_brokers(self) -> set[int]:
        """Node ids of the brokers the cluster's metadata lists right now (empty if none answers)."""
        try:
            with admin_client(self.bootstrap, 5.0) as admin:
                return {int(b["broker_id"]) for b in admin.describe_cluster()["brokers"]}
        except Exception:
            return set()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop every node at once (SIGTERM, SIGKILL after ``timeout``); False if none was running.

        At once, not one by one: the last nodes of a cluster stopped in turn wait for a
        controller quorum that is already gone."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            return any(list(pool.map(lambda b: b.stop(timeout=timeout), self.nodes.values())))

    def kill(self, node_id: int) -> bool:
        """Crash one node (SIGKILL)."""
        return self.node(node_id).kill()

    def start_node(self, node_id: int, timeout: float = 120.0) -> StartResult:
        """Start one node again and wait until it answers."""
        return self.node(node_id).start(wait=True, timeout=timeout)

    def status(self) -> list[tuple[NodeAddress, BrokerStatus]]:
        return [(n, self.nodes[n.node_id].status()) for n in self.layout.nodes]

    @property
    def answering(self) -> bool:
        return api_ready(self.bootstrap)
