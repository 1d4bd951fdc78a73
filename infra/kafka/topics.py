"""The platform's topics: created idempotently with the kafka-python admin client.

Names come from :mod:`pipelines.topics` (one place for producers, the speed
layer and this module).  Event topics get ``settings.kafka.partitions``
partitions, the dead-letter topic one; all keep ``settings.kafka.retention_ms``.
Replication follows the cluster the topics are created on: one replica on one
broker, three (``min.insync.replicas=2``) from three brokers up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from infra.kafka.config import min_insync
from infra.kafka.errors import KafkaUnavailableError, TopicMismatchError
from pipelines.settings import Settings
from pipelines.topics import SOURCE_KINDS, deadletter_topic, event_topics, topic_for_kind

#: source kind -> topic, with the default prefix (``topic_for_kind(kind, settings.kafka.topic_prefix)``
#: for another prefix)
TOPICS: Mapping[str, str] = MappingProxyType({kind: topic_for_kind(kind) for kind in SOURCE_KINDS})


#: the most replicas a topic gets, however many brokers the cluster has
MAX_REPLICATION = 3


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: Mapping[str, str]
    replication: int = 1


@dataclass(frozen=True)
class PartitionInfo:
    """Where a partition lives: its leader (None while it has none), replicas and in-sync replicas."""

    topic: str
    partition: int
    leader: int | None
    replicas: tuple[int, ...]
    isr: tuple[int, ...]

    @property
    def under_replicated(self) -> bool:
        return len(self.isr) < len(self.replicas)


@dataclass(frozen=True)
class TopicInfo:
    """A topic as the broker reports it, with the end offset (next offset to write) of each partition."""

    name: str
    partitions: int
    end_offsets: Mapping[int, int]

    @property
    def messages(self) -> int:
        """Offsets written so far (retention may have deleted the oldest)."""
        return sum(self.end_offsets.values())


def replication_for(brokers: int) -> int:
    """Replicas per partition on a cluster of ``brokers``: all of them, at most three."""
    return max(1, min(brokers, MAX_REPLICATION))


def topic_specs(settings: Settings, replication: int = 1) -> list[TopicSpec]:
    """The topics the platform needs, with the layout these settings ask for, on ``replication`` nodes."""
    k = settings.kafka
    configs = {"retention.ms": str(k.retention_ms), "min.insync.replicas": str(min_insync(replication))}
    specs = [TopicSpec(name, k.partitions, configs, replication) for name in event_topics(k.topic_prefix)]
    specs.append(TopicSpec(deadletter_topic(k.topic_prefix), 1, configs, replication))
    return specs


@contextmanager
def admin_client(bootstrap: str, timeout_s: float = 10.0) -> Iterator[Any]:
    """A kafka-python admin client, closed on exit; an unreachable broker is a transient error."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="pcc-admin",
            bootstrap_timeout_ms=ms,
            request_timeout_ms=ms,
        )
    except KafkaError as exc:
        raise KafkaUnavailableError(
            f"no Kafka broker answers at {bootstrap} ({type(exc).__name__}); start one with `pcc kafka up`"
        ) from None
    try:
        yield admin
    finally:
        admin.close()


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the platform's topics that do not exist yet; returns the names created.

    An existing topic with another partition count raises :class:`TopicMismatchError`
    (keys would land on other partitions than consumers expect).  The replication
    factor follows the brokers the cluster reports (:func:`replication_for`).
    """
    from kafka.errors import TopicAlreadyExistsError

    with admin_client(settings.kafka.bootstrap, timeout_s) as admin:
        brokers = len(admin.describe_cluster()["brokers"])
        specs = topic_specs(settings, replication_for(brokers))
        existing = {t["name"]: len(t["partitions"]) for t in _describe(admin, [s.name for s in specs])}
        for spec in specs:
            if spec.name in existing and existing[spec.name] != spec.partitions:
                raise TopicMismatchError(
                    f"topic {spec.name} exists with {existing[spec.name]} partitions, the settings ask for "
                    f"{spec.partitions} (PCC__KAFKA__PARTITIONS); recreate it or change the setting"
                )
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        request = {
            s.name: {
                "num_partitions": s.partitions,
                "replication_factor": s.replication,
                "configs": dict(s.configs),
            }
            for s in missing
        }
        result = admin.create_topics(request, timeout_ms=int(timeout_s * 1000), raise_errors=False)
        created = []
        for topic in result["topics"]:
            if topic["error_code"] == 0:
                created.append(topic["name"])
            elif topic["error_code"] != TopicAlreadyExistsError.errno:  # a concurrent creator won the race
                raise TopicMismatchError(
                    f"could not create topic {topic['name']}: {topic['error_message'] or topic['error_code']}"
                )
        if created:
            admin.wait_for_topics(created, timeout_ms=int(timeout_s * 1000))
    if created:
        _wait_on_every_node(settings.kafka.bootstrap, created, time.monotonic() + timeout_s)
    return created


def _wait_on_every_node(bootstrap: str, names: list[str], deadline: float) -> None:
    """Wait until each node of ``bootstrap`` describes ``names`` with a leader for every partition.

    The node that created them knows them at once; the others learn them from the
    controller a moment later, and a client bootstrapped on one of those (``pcc kafka
    status``, a producer) would see no topic.  A node that does not answer is skipped.
    """
    from kafka.errors import KafkaError

    addresses = [a.strip() for a in bootstrap.split(",") if a.strip()]
    if len(addresses) < 2:
        return
    for address in addresses:
        try:
            with admin_client(address, max(1.0, deadline - time.monotonic())) as admin:
                while True:
                    known = {
                        t["name"]
                        for t in _describe(admin, names)
                        if t["partitions"] and all(p["leader_id"] >= 0 for p in t["partitions"])
                    }
                    if known >= set(names) or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
        except (KafkaError, KafkaUnavailableError):
            continue


def describe_topics(
    settings: Settings, names: list[str] | None = None, timeout_s: float = 10.0
) -> list[TopicInfo]:
    """The platform's topics (or ``names``) that exist, with partitions and end offsets."""
    from kafka import TopicPartition
    from kafka.admin import OffsetSpec

    wanted = names if names is not None else [s.name for s in topic_specs(settings)]
    with admin_client(settings.kafka.bootstrap, timeout_s) as admin:
        topics = _describe(admin, wanted)
        specs = {
            TopicPartition(t["name"], p["partition_index"]): OffsetSpec.LATEST
            for t in topics
            for p in t["partitions"]
        }
        offsets = admin.list_partition_offsets(specs) if specs else {}
    return [
        TopicInfo(
            name=t["name"],
            partitions=len(t["partitions"]),
            end_offsets={
                p["partition_index"]: offsets[TopicPartition(t["name"], p["partition_index"])].offset
                for p in sorted(t["partitions"], key=lambda p: p["partition_index"])
            },
        )
        for t in sorted(topics, key=lambda t: t["name"])
    ]


def describe_partitions(
    settings: Settings, names: list[str] | None = None, timeout_s: float = 10.0
) -> list[PartitionInfo]:
    """Leader, replicas and in-sync replicas of every partition of the platform's topics (or ``names``)."""
    from kafka.errors import KafkaError

    wanted = names if names is not None else [s.name for s in topic_specs(settings)]
    addresses = [a.strip() for a in settings.kafka.bootstrap.split(",") if a.strip()]
    for n, address in enumerate(addresses):  # one address at a time: a node that is down is skipped
        try:
            with admin_client(address, timeout_s) as admin:
                topics = _describe(admin, wanted)
            break
        except (KafkaError, KafkaUnavailableError):
            if n == len(addresses) - 1:
                raise KafkaUnavailableError(
                    f"no Kafka broker answers at {settings.kafka.bootstrap}; start one with `pcc kafka up`"
                ) from None
    return sorted(
        (
            PartitionInfo(
                topic=t["name"],
                partition=p["partition_index"],
                leader=p["leader_id"] if p["leader_id"] >= 0 else None,
                replicas=tuple(sorted(p["replica_nodes"])),
                isr=tuple(sorted(p["isr_nodes"])),
            )
            for t in topics
            for p in t["partitions"]
        ),
        key=lambda i: (i.topic, i.partition),
    )


def _describe(admin: Any, names: list[str]) -> list[dict[str, Any]]:
    """Metadata of the named topics that exist (unknown ones are left out)."""
    return [t for t in admin.describe_topics(names) if t["error_code"] == 0]
