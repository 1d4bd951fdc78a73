"""The main job end to end on real components: a small ``pcc demo`` on the session's broker,
anvil node and Spark session.

What a user checks: every event a producer accepted is exactly once in the speed layer's
master dataset, the batch layer's ``vehicle_history`` and the serving view (by event id);
every extra Kafka record is a dead letter with its reason; a tampered event is caught as
``bad_hash``; a paid query's settlement pays exactly the producers whose rows it returned,
by their share, and the treasury its fee.
"""

from __future__ import annotations

import io
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from rich.console import Console

pytest.importorskip("apache_beam")
pytest.importorskip("pyspark")

from kafka import KafkaConsumer, TopicPartition

from infra.chain.node import NodeInfo, free_port
from infra.demo import PRICES, DemoOptions, DemoResult, run_demo
from pipelines.dataset import master_files
from pipelines.settings import Settings
from pipelines.topics import event_topics
from tests.fixtures.kafka import KafkaBroker

pytestmark = pytest.mark.integration

OPTIONS = DemoOptions(vehicles=30, days=120, seed=7, tampered=3, replays=1, start_services=False)


@pytest.fixture(scope="module")
def demo(
    kafka_broker: KafkaBroker, anvil_node: NodeInfo, spark: Any, tmp_path_factory: pytest.TempPathFactory
) -> DemoResult:
    prefix = f"e2e{uuid.uuid4().hex[:6]}."  # topics of its own on the shared broker
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("end-to-end"),
        kafka={**kafka_broker.settings.kafka.model_dump(), "topic_prefix": prefix},
        ledger={"rpc_url": anvil_node.url, "chain": "anvil"},
        serving={"port": free_port()},
    )
    return run_demo(settings, OPTIONS, spark=spark, console=Console(file=io.StringIO(), width=120))


def simulated_ids(fleet_dir: Path) -> Counter[str]:
    """Event ids of every line the producers were given (a simulated replay appears twice)."""
    ids: Counter[str] = Counter()
    for path in (fleet_dir / "events").glob("*.jsonl"):
        with open(path, "rb") as fh:
            ids.update(orjson.loads(line)["event_id"] for line in fh if line.strip())
    return ids


def kafka_records(settings: Settings) -> list[dict[str, Any]]:
    """Every record on the event topics, parsed when it parses."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000
    )
    tps = [
        TopicPartition(t, p)
        for t in event_topics(settings.kafka.topic_prefix)
        for p in sorted(consumer.partitions_for_topic(t) or ())
    ]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out = [orjson.loads(r.value) for r in consumer]
    consumer.close()
    return out


def parquet_ids(files: list[Path]) -> list[str]:
    return pq.read_table(files, columns=["event_id"], partitioning=None).column("event_id").to_pylist()


def serving_view_ids(settings: Settings) -> list[str]:
    """Event ids of the serving layer's merged ``vehicle_history`` (batch + real time), as it serves them."""
    from serving.config import ServingConfig
    from serving.engine.views import ServingStore

    store = ServingStore(ServingConfig.from_settings(settings))
    try:
        store.refresh()
        with store.pin() as (cur, _version):
            return [r[0] for r in cur.execute("SELECT event_id FROM vehicle_history").fetchall()]
    finally:
        store.close()


def test_every_accepted_event_reaches_each_layer_exactly_once(demo: DemoResult):
    settings = demo.settings
    given = simulated_ids(demo.fleet_dir)
    assert sum(demo.produced.values()) == sum(given.values()) > 1000
    assert sum(demo.rejected.values()) == 0

    on_kafka = Counter(e["event_id"] for e in kafka_records(settings))
    injected = Counter(event_id for _, event_id in demo.injected)
    assert on_kafka == given + injected
    assert demo.kafka_records == sum(on_kafka.values())

    master = parquet_ids(master_files(Path(settings.path("master"))))
    assert len(master) == len(set(master)) == len(given)
    assert set(master) == set(given)
    assert demo.master_rows == len(master)
    # each extra record (a simulated replay, an injected tamper or replay) is one dead letter
    assert len(master) + len(demo.dead_letters) == sum(on_kafka.values())

    from batch.config import BatchConfig
    from batch.publish import read_current

    config = BatchConfig.from_settings(settings)
    current = read_current(config)
    assert current is not None and current.version == demo.batch_version
    history = parquet_ids(sorted((config.batch_dir / current.views["vehicle_history"]).glob("*.parquet")))
    assert sorted(history) == sorted(master)

    served = serving_view_ids(settings)
    assert sorted(served) == sorted(master)
    assert demo.serving_rows == demo.serving_events == len(master)


def test_tampered_events_and_replays_are_dead_lettered_with_their_reason(demo: DemoResult):
    given = simulated_ids(demo.fleet_dir)
    simulated_replays = sum(n - 1 for n in given.values())
    reasons = Counter(reason for reason, _ in demo.dead_letters)
    assert reasons == {"bad_hash": OPTIONS.tampered, "duplicate_event": simulated_replays + OPTIONS.replays}
    tampered = {event_id for reason, event_id in demo.injected if reason == "bad_hash"}
    assert len(tampered) == OPTIONS.tampered
    assert {event_id for reason, event_id in demo.dead_letters if reason == "bad_hash"} == tampered
    # the honest original of a tampered event is kept, with its producer's odometer
    originals: dict[str, dict[str, Any]] = {}
    for e in kafka_records(demo.settings):  # the producer's record comes before the tampered copy
        if e["event_id"] in tampered:
            originals.setdefault(e["event_id"], e)
    files = master_files(Path(demo.settings.path("master")))
    rows = pq.read_table(files, columns=["event_id", "odometer_km"], partitioning=None).to_pylist()
    kept = {r["event_id"]: r["odometer_km"] for r in rows if r["event_id"] in tampered}
    assert kept == {i: originals[i]["payload"]["odometer_km"] for i in tampered}


def _earned(receipt: dict[str, Any]) -> tuple[dict[str, int], int]:
    amount = receipt["amount_cents"]
    fee = amount * receipt["fee_bps"] // 10_000
    weights = {s: p["cents"] for s, p in receipt["by_producer"].items() if p["cents"] > 0}
    earned = {s: (amount - fee) * w // sum(weights.values()) for s, w in weights.items()}
    return earned, amount - sum(earned.values())


def test_a_paid_query_pays_exactly_the_producers_whose_rows_it_returned(demo: DemoResult):
    history = demo.queries[0]
    assert history.rows == sum(history.sources_in_rows.values()) > 0
    receipt = history.receipt
    assert {s: p["rows"] for s, p in receipt["by_producer"].items()} == history.sources_in_rows
    earned, treasury = _earned(receipt)
    producers = {k: v for k, v in history.deltas.items() if k not in ("consumer", "treasury")}
    assert producers == {s: earned.get(s, 0) for s in producers}
    assert {s for s, v in producers.items() if v > 0} == {s for s, v in earned.items() if v > 0}
    assert history.deltas["treasury"] == treasury > 0
    assert history.deltas["consumer"] == -receipt["amount_cents"]
    assert history.settle_gas > 0

    # the passport is sold like a query: one receipt at governance's price per report, shared by the
    # producers whose events it shows, settled
    report = demo.queries[-1]
    assert report.sql == f"GET /passport/{demo.flagged_vehicle}/data.json"
    assert report.receipt["amount_cents"] == PRICES["passport_report"] == -report.deltas["consumer"]
    assert {s: p["rows"] for s, p in report.receipt["by_producer"].items()} == report.sources_in_rows
    assert sum(p["cents"] for p in report.receipt["by_producer"].values()) == PRICES["passport_report"]
    # and opened free by the owner's share link
    assert demo.share_url is not None and f"/passport/{demo.flagged_vehicle}?share=" in demo.share_url

    # every query is settled, and the credits at the end are the sum of what each settlement paid
    assert all(q.settle_tx for q in demo.queries)
    for source, cents in demo.paid.items():
        assert cents == sum(q.deltas[source] for q in demo.queries)


def test_the_summary_reports_frauds_and_draws_a_chart(demo: DemoResult):
    with open(demo.fleet_dir / "labels.jsonl", "rb") as fh:
        labelled = {(label["kind"], label["vin"]) for label in map(orjson.loads, fh)}
    vehicles = Counter(kind for kind, _ in labelled if kind != "noise")
    assert {k.kind: k.support for k in demo.evaluation.kinds if k.support} == dict(vehicles)
    assert demo.flagged_vehicle is not None and demo.passport_url.endswith(demo.flagged_vehicle)
    assert demo.chart is not None and demo.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert demo.gas["anchoring"] > 0 and demo.gas["total"] >= sum(
        v for k, v in demo.gas.items() if k != "total"
    )
