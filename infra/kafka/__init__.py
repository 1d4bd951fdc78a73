"""The project's own Apache Kafka broker (KRaft, one node, no Docker) and the platform's topics.

from infra.kafka import Broker, ensure_topics, TOPICS

Broker(settings).start()        # jars on first use, format on first start, wait until ready
ensure_topics(settings)         # pcc.telemetry / pcc.garage / pcc.insurer / pcc.deadletter
TOPICS["connected_car"]         # 'pcc.telemetry'

The names are imported on first use (listed in ``__init__.pyi`` for type
checkers), so ``pcc kafka --help`` loads neither the broker nor the settings.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
