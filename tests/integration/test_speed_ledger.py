"""The speed layer against a real chain node: events published by the producer SDK are verified
against the checkpoints anchored on chain; forged ones are dead-lettered with the right reason."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

pytest.importorskip("apache_beam")

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from infra.chain.node import NodeInfo
from ledger.onboarding import deploy_consortium, register_source
from pipelines.producer import Producer, load_anchor
from pipelines.producer.kafka import KafkaPublisher
from pipelines.settings import Settings
from pipelines.vault import IdentityVault
from pipelines.vin import with_check_digit
from tests.fixtures.kafka import KafkaBroker

pytestmark = pytest.mark.integration

PCC = [sys.executable, "-c", "import sys; from pipelines.cli.main import main; sys.exit(main())"]


def _read(bootstrap: str, topic: str, partitions: int) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out = [(r.value, dict(r.headers)) for r in consumer]
    consumer.close()
    return out


def test_events_from_the_producer_sdk_are_verified_against_the_chain(
    kafka_broker: KafkaBroker, anvil_node: NodeInfo, tmp_path: Path
) -> None:
    prefix = "s" + uuid.uuid4().hex[:8] + "."
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    admin.create_topics(
        [NewTopic(prefix + t, 4, 1) for t in ("telemetry", "garage", "insurer")]
        + [NewTopic(prefix + "deadletter", 1, 1)]
    )
    admin.close()
    settings = Settings(
        data_dir=tmp_path,
        kafka={**kafka_broker.settings.kafka.model_dump(), "topic_prefix": prefix},
        ledger={"rpc_url": anvil_node.url, "chain": "anvil"},
        producer={"checkpoint_every": 64, "checkpoint_seconds": 3600},
    )
    deploy_consortium(settings)
    source_id = f"cc-speed-{uuid.uuid4().hex[:6]}"
    register_source(settings, source_id, "connected_car", 1)
    vault = IdentityVault(settings)
    try:
        with Producer(
            settings,
            source_id=source_id,
            source_kind="connected_car",
            anchor=load_anchor(settings),
            publisher=KafkaPublisher(settings.kafka.bootstrap),
            vault=vault,
        ) as producer:
            for i in range(192):
                producer.submit(
                    {
                        "event_type": "odometer_reading",
                        "schema_version": 1,
                        "source_id": source_id,
                        "vin": with_check_digit(f"WVWZZZ1KZ{i % 12:08d}"),
                        "event_time": f"2026-02-{1 + i // 12:02d}T08:00:00.000Z",
                        "payload": {"odometer_km": 10_000 + i * 10},
                    }
                )
    finally:
        vault.close()

    honest = [orjson.loads(v) for v, _ in _read(settings.kafka.bootstrap, prefix + "telemetry", 4)]
    assert len(honest) == 192
    first, last = sorted(honest, key=lambda e: e["proof"]["log_index"])[0], honest[-1]
    forged = copy.deepcopy(last)
    other = next(e for e in honest if e["proof"]["tree_size"] != last["proof"]["tree_size"])
    forged["proof"]["root"] = other["proof"]["root"]  # an anchored root, but of another checkpoint
    tampered = orjson.dumps(first).replace(b'"odometer_km":', b'"odometer_km":1', 1)
    kp = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    kp.send(prefix + "telemetry", key=b"x", value=orjson.dumps(forged))
    kp.send(prefix + "telemetry", key=b"x", value=tampered)
    kp.flush()
    kp.close()

    env = {k: v for k, v in os.environ.items() if not k.startswith("PCC__") and k != "PCC_CONFIG"}
    env.update(
        PCC__DATA_DIR=str(tmp_path),
        PCC__KAFKA__BOOTSTRAP=settings.kafka.bootstrap,
        PCC__KAFKA__TOPIC_PREFIX=prefix,
        PCC__LEDGER__RPC_URL=anvil_node.url,
        PCC__LEDGER__CHAIN="anvil",
    )
    run = subprocess.run(
        [*PCC, "speed", "run", "--until-idle", "4", "--metrics-port", "0"],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    letters = _read(settings.kafka.bootstrap, prefix + "deadletter", 1)
    reasons = sorted(h["pcc-reason"].decode() + ": " + h["pcc-detail"].decode()[:200] for _, h in letters)
    assert list((tmp_path / "realtime").glob("*.parquet")), reasons[:3]
    rows = pq.read_table(tmp_path / "realtime", columns=["event_id", "verification", "q_source"]).to_pylist()
    assert sorted(r["event_id"] for r in rows) == sorted(e["event_id"] for e in honest)
    assert {r["verification"] for r in rows} == {"verified"}
    assert all(0.6 <= r["q_source"] <= 1.0 for r in rows)  # tier 1 from the SourceRegistry
    assert sorted(h["pcc-reason"].decode() for _, h in letters) == ["bad_hash", "bad_proof"]
    assert {v for v, _ in letters} == {orjson.dumps(forged), tampered}
