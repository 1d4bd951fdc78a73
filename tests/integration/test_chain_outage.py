"""Fault injection (issue 18): the chain node stopped while a producer produces.

A chain node of this test's own (free port, own state dir) is stopped for
``OUTAGE_S`` while a producer keeps submitting events and while the speed
layer (``pcc speed run`` in a subprocess) reads what was published before the
stop, then started again on the same port and state dir.  Proven: the node
keeps its contracts, sources and checkpoints across the restart (anvil
``--state``); the producer keeps accepting events during the outage, they wait
in its log for their anchor, anchoring catches up after the restart, and the
log holds every accepted event once; the speed layer waits for the ledger
instead of dead-lettering, then accepts every event exactly once, verified
against the roots anchored on chain; nothing reaches the dead-letter topic.

No mocks: the real anvil node and the real Kafka broker.  The waits below
wait for a condition (with a generous deadline), never assert on a duration.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

pytest.importorskip("apache_beam")

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from infra.chain import node
from infra.procs import free_ports
from ledger.client import LedgerClient
from ledger.onboarding import deploy_consortium, register_source
from pipelines import merkle
from pipelines.producer import Producer, load_anchor
from pipelines.producer.kafka import KafkaPublisher
from pipelines.settings import Settings
from pipelines.vault import IdentityVault
from pipelines.vin import with_check_digit
from tests.fixtures.kafka import KafkaBroker

pytestmark = pytest.mark.integration

PCC = [sys.executable, "-c", "import sys; from pipelines.cli.main import main; sys.exit(main())"]
#: the chain node is down at least this long; PCC_TEST_CHAIN_OUTAGE_S=60 for the issue's 60 s (docs/operations.md)
OUTAGE_S = float(os.environ.get("PCC_TEST_CHAIN_OUTAGE_S", "12"))
WAIT_S = 180.0  # deadline of every wait for a condition (a loaded machine is slow, never wrong)


def _wait_for(what: str, condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def _read(bootstrap: str, topic: str, partitions: int) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out = [(r.value, dict(r.headers)) for r in consumer]
    consumer.close()
    return out


def _metrics(port: int) -> dict[str, float]:
    """The speed layer's Prometheus samples (name with labels -> value); empty until it serves."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    samples = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            samples[m.group(1)] = float(m.group(2))
    return samples


class _Feed:
    """Submits events to the producer continuously (a connected car's feed) until stopped."""

    def __init__(self, producer: Producer, source_id: str) -> None:
        self.producer = producer
        self.source_id = source_id
        self.ids: list[str] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="feed", daemon=True)

    def _run(self) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                self.ids.append(
                    self.producer.submit(
                        {
                            "event_type": "odometer_reading",
                            "schema_version": 1,
                            "source_id": self.source_id,
                            "vin": with_check_digit(f"WVWZZZ1KZ{i % 20:08d}"),
                            "event_time": f"2026-03-{1 + i // 3600 % 28:02d}T{i // 60 % 60 // 3:02d}:"
                            f"{i // 60 % 60:02d}:{i % 60:02d}.000Z",
                            "payload": {"odometer_km": 10_000 + i * 5},
                        }
                    )
                )
                i += 1
                time.sleep(0.01)
        except BaseException as exc:  # the test reports it: a producer must not die of an outage
            self.error = exc


def test_chain_node_stopped_during_produce(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    chain_state = tmp_path / "chain"
    port = node.free_port()
    info = node.start("anvil", port, chain_state)
    speed: subprocess.Popen[bytes] | None = None
    speed_log = None
    try:
        prefix = "o" + uuid.uuid4().hex[:8] + "."
        admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        admin.create_topics(
            [NewTopic(prefix + t, 4, 1) for t in ("telemetry", "garage", "insurer")]
            + [NewTopic(prefix + "deadletter", 1, 1)]
        )
        admin.close()
        settings = Settings(
            data_dir=tmp_path / "data",
            kafka={**kafka_broker.settings.kafka.model_dump(), "topic_prefix": prefix},
            ledger={"rpc_url": info.url, "chain": "anvil"},
            producer={"checkpoint_every": 50, "checkpoint_seconds": 1.0},
        )
        deploy_consortium(settings)
        source_id = f"cc-outage-{uuid.uuid4().hex[:6]}"
        register_source(settings, source_id, "connected_car", 1)

        vault = IdentityVault(settings)
        producer = Producer(
            settings,
            source_id=source_id,
            source_kind="connected_car",
            anchor=load_anchor(settings),
            publisher=KafkaPublisher(settings.kafka.bootstrap),
            vault=vault,
        )
        feed = _Feed(producer, source_id)
        feed.thread.start()
        _wait_for("two checkpoints anchored and published", lambda: producer.report.published >= 100)

        # ---- the outage: the node stops while the feed goes on
        node.stop(chain_state)
        assert node.rpc_chain_id(info.url) is None
        stopped_at = time.time()
        accepted_at_stop = len(feed.ids)

        # the speed layer starts during the outage: what was published before the stop waits for the ledger
        metrics_port = free_ports(1)[0]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PCC__") and k != "PCC_CONFIG"}
        env.update(
            PCC__DATA_DIR=str(settings.data_dir),
            PCC__KAFKA__BOOTSTRAP=settings.kafka.bootstrap,
            PCC__KAFKA__TOPIC_PREFIX=prefix,
            PCC__LEDGER__RPC_URL=info.url,
            PCC__LEDGER__CHAIN="anvil",
        )
        speed_log = open(tmp_path / "speed.log", "wb")  # noqa: SIM115 - closed in finally
        speed = subprocess.Popen(
            [*PCC, "speed", "run", "--metrics-port", str(metrics_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=speed_log,
        )
        _wait_for(
            "the speed layer holding events that wait for the ledger",
            lambda: _metrics(metrics_port).get("pcc_speed_pending", 0) > 0,
        )
        _wait_for("the outage", lambda: time.time() - stopped_at >= OUTAGE_S)
        assert feed.error is None, f"the producer failed during the outage: {feed.error!r}"
        assert feed.thread.is_alive()
        # what was anchored before the stop is published; what came after waits in the log for its anchor
        at_stop = producer.log.published.size
        checkpoints_at_stop = producer.report.checkpoints
        assert producer.log.last_anchor is not None and producer.log.last_anchor.tree_size == at_stop
        waiting = producer.log.unpublished
        assert waiting > 0 and len(feed.ids) > accepted_at_stop
        speed_during = _metrics(metrics_port)
        assert speed_during.get("pcc_speed_dead_letters_total", 0) == 0
        assert not any(k.startswith("pcc_speed_accepted_total") and v for k, v in speed_during.items())

        # ---- the node comes back on the same port and state dir
        accepted_in_outage = len(feed.ids) - accepted_at_stop
        restarted_at = time.time()  # from here on the node may answer
        node.start("anvil", port, chain_state)
        _wait_for(
            "anchoring to catch up after the restart",
            lambda: (
                producer.report.checkpoints > checkpoints_at_stop and producer.log.published.size > at_stop
            ),
        )
        caught_up_at = time.time()
        feed.stop.set()
        feed.thread.join(60)
        assert feed.error is None, f"the producer failed after the outage: {feed.error!r}"
        report = producer.close()
        vault.close()
        produced = len(feed.ids)
        assert report.accepted == report.published == produced and report.unsent == 0

        # the producer's log: every accepted event once, all published, nothing left in the spool
        assert len(set(feed.ids)) == produced
        log_dir = settings.path("producers", source_id)
        with merkle.LeafHashFile(log_dir / "leaves.bin") as leaves:
            assert len(leaves) == produced
            root = merkle.root(leaves[0:produced])
        assert (log_dir / "spool.jsonl").read_bytes() == b""

        # on the wire: each event once, with a proof against a checkpoint anchored on chain
        wire = [orjson.loads(v) for v, _ in _read(settings.kafka.bootstrap, prefix + "telemetry", 4)]
        assert sorted(e["event_id"] for e in wire) == sorted(feed.ids)
        assert sorted(e["proof"]["log_index"] for e in wire) == list(range(produced))
        ledger = LedgerClient.from_settings(settings)
        assert ledger.sources.is_registered(source_id)  # the restarted node kept the contracts and the source
        checkpoints = {(e["proof"]["tree_size"], e["proof"]["root"]) for e in wire}
        for size, root_hex in checkpoints:  # before the outage (kept by --state) and after it
            assert ledger.anchors.root_at(source_id, size) == bytes.fromhex(root_hex), size
        assert ledger.anchors.latest(source_id) == (produced, root)
        assert any(size <= at_stop for size, _ in checkpoints)
        assert any(size > at_stop for size, _ in checkpoints)
        assert ledger.anchors.checkpoint_count(source_id) == report.checkpoints == len(checkpoints)

        # the speed layer: every event accepted once, verified; nothing dead-lettered
        _wait_for(
            "the speed layer to make every event durable",
            lambda: _metrics(metrics_port).get("pcc_speed_rows_flushed_total", 0) >= produced,
        )
        speed_done_at = time.time()
        speed.send_signal(signal.SIGTERM)
        assert speed.wait(120) == 0, (tmp_path / "speed.log").read_text()[-3000:]
        rows = pq.read_table(
            settings.data_dir / "realtime",
            columns=["event_id", "verification", "processed_time", "log_index"],
        ).to_pylist()
        assert sorted(r["event_id"] for r in rows) == sorted(feed.ids)  # exactly once
        assert {r["verification"] for r in rows} == {"verified"}
        # the events published before the stop: none accepted before the restart (the metrics above),
        # all of them after the stop
        early = [
            r["processed_time"].replace(tzinfo=UTC).timestamp() for r in rows if r["log_index"] < at_stop
        ]
        assert len(early) == at_stop and min(early) >= stopped_at
        letters = _read(settings.kafka.bootstrap, prefix + "deadletter", 1)
        assert letters == [], [h.get("pcc-reason") for _, h in letters]
        print(  # the figures of docs/operations.md (pytest -s)
            f"chain outage: node down {restarted_at - stopped_at:.1f} s, {accepted_in_outage} events accepted "
            f"meanwhile ({waiting} waiting for their anchor at the restart); first checkpoint anchored and "
            f"published {caught_up_at - restarted_at:.1f} s after the restart; {produced} events in "
            f"{report.checkpoints} checkpoints; the speed layer had every event "
            f"{speed_done_at - restarted_at:.1f} s after the restart"
        )
    finally:
        if speed is not None and speed.poll() is None:
            speed.kill()
            speed.wait(30)
        if speed_log is not None:
            speed_log.close()
        node.stop(chain_state)
