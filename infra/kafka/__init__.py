"""The project's own Apache Kafka broker (KRaft, one node, no Docker) and the platform's topics.

from infra.kafka import Broker, ensure_topics, TOPICS

Broker(settings).start()        # jars on first use, format on first start, wait until ready
ensure_topics(settings)         # pcc.telemetry / pcc.garage / pcc.insurer / pcc.deadletter
TOPICS["connected_car"]         # 'pcc.telemetry'
"""

from infra.kafka.broker import Broker, BrokerStatus, StartResult
from infra.kafka.config import KAFKA_VERSION, BrokerPaths
from infra.kafka.errors import BrokerStateError, KafkaConfigError, KafkaUnavailableError, TopicMismatchError
from infra.kafka.topics import TOPICS, TopicInfo, TopicSpec, describe_topics, ensure_topics, topic_specs

__all__ = [
    "KAFKA_VERSION",
    "TOPICS",
    "Broker",
    "BrokerPaths",
    "BrokerStateError",
    "BrokerStatus",
    "KafkaConfigError",
    "KafkaUnavailableError",
    "StartResult",
    "TopicInfo",
    "TopicMismatchError",
    "TopicSpec",
    "describe_topics",
    "ensure_topics",
    "topic_specs",
]
