"""What the demo reads back from each layer: dead letters, the master dataset, the fraud evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines import layout
from pipelines.dataset import master_files
from pipelines.settings import Settings


def read_dead_letters(settings: Settings) -> list[tuple[str, str | None]]:
    from kafka import KafkaConsumer, TopicPartition

    from pipelines.topics import deadletter_topic

    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000
    )
    tp = TopicPartition(deadletter_topic(settings.kafka.topic_prefix), 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    out = [(dict(r.headers)["pcc-reason"].decode(), r.key.decode() if r.key else None) for r in consumer]
    consumer.close()
    return out


def master_stats(settings: Settings) -> tuple[int, float]:
    """Rows of the master dataset and the share of them verified against an anchored checkpoint."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = layout.master_dir(settings.data_dir, settings.batch.master_dataset)
    files = master_files(Path(root))
    if not files:
        return 0, 0.0
    column = pq.read_table(files, columns=["verification"], partitioning=None).column("verification")
    verified = int(pc.sum(pc.equal(column, "verified")).as_py() or 0)
    return len(column), verified / len(column)


def evaluate_fraud(settings: Settings, fleet_dir: Path) -> Any:
    """Published fraud scores against the simulator's labels, vehicles matched through the vault."""
    from batch.config import BatchConfig
    from batch.evaluate import evaluate_published
    from pipelines.vault import IdentityVault

    with IdentityVault(settings) as vault:
        return evaluate_published(BatchConfig.from_settings(settings), fleet_dir, vault.find_vehicle)
