"""The speed layer end to end on the real broker: ``pcc speed run`` on Beam's FnApiRunner.

Honest events land in the real-time view and in the master dataset exactly
once, also across a ``kill -9`` mid-stream and a restart; tampered, forged,
replayed and unparseable messages land in the dead-letter topic with their
reason, and the run goes on.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("apache_beam")

import pyarrow.parquet as pq
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from pipelines.dataset import MASTER_COLUMNS
from speed.roots import InMemoryRoots
from tests.fixtures.synthetic import FixedRoots, SyntheticSource, vehicle, wire

pytestmark = pytest.mark.integration

DAY = 86_400_000
PCC = [sys.executable, "-c", "import sys; from pipelines.cli.main import main; sys.exit(main())"]


def _topics(bootstrap: str) -> str:
    """Fresh topics under a prefix of their own (other tests share the broker)."""
    prefix = "t" + uuid.uuid4().hex[:8] + "."
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(prefix + t, 4, 1) for t in ("telemetry", "garage", "insurer")]
            + [NewTopic(prefix + "deadletter", 1, 1)]
        )
    finally:
        admin.close()
    return prefix


def _publish(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks="all")
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def _env(bootstrap: str, prefix: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCC__") and k != "PCC_CONFIG"}
    env.update(
        PCC__KAFKA__BOOTSTRAP=bootstrap,
        PCC__KAFKA__TOPIC_PREFIX=prefix,
        PCC__DATA_DIR=str(data_dir),
        PCC__SPEED__PROOF_WAIT_S="1",
    )
    return env


def _speed(env: dict[str, str], roots: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*PCC, "speed", "run", "--metrics-port", "0", "--roots-file", str(roots), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _rows(directory: Path) -> list[dict[str, Any]]:
    files = sorted(directory.rglob("*.parquet"))
    rows: list[dict[str, Any]] = []
    for f in files:
        table = pq.read_table(f)
        assert tuple(table.schema.names) == MASTER_COLUMNS, f
        rows += table.select(["event_id", "verification", "flags"]).to_pylist()
    return rows


def _dead_letters(bootstrap: str, topic: str) -> list[tuple[str, bytes, dict[str, bytes]]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    out = [(dict(r.headers)["pcc-reason"].decode(), r.value, dict(r.headers)) for r in consumer]
    consumer.close()
    return out


def test_bad_input_is_dead_lettered_with_its_reason_and_honest_events_pass(
    kafka_broker, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    prefix = _topics(bootstrap)
    roots = InMemoryRoots()
    src = SyntheticSource("cc-aurora", roots, checkpoint_every=50)
    start = int(time.time() * 1000) - 20 * DAY
    honest = [
        src.append(src.odometer(vehicle(i % 10), 5_000 + i * 30, start + i * 3_600_000)) for i in range(100)
    ]
    src.checkpoint()
    tampered = wire(honest[3]).replace(b'"odometer_km":', b'"odometer_km":7', 1)
    forged = copy.deepcopy(honest[60])
    forged["proof"]["root"] = honest[10]["proof"]["root"]  # a proof for the wrong checkpoint
    rogue = SyntheticSource("garage-rogue", None)
    unknown = rogue.append(rogue.odometer(vehicle(99), 10, start))
    rogue.checkpoint()
    ahead = int(time.time() * 1000) + 3 * 3_600_000
    future = src.append(src.odometer(vehicle(98), 10, ahead, ingestion_ms=ahead))
    src.checkpoint()
    bad = [
        (tampered, "bad_hash"),
        (wire(forged), "bad_proof"),
        (wire(honest[5]), "duplicate_event"),  # replayed event id
        (wire(unknown), "unknown_source"),
        (b'{"event_id": ', "unparseable"),
        (wire(future), "future_timestamp"),
    ]
    roots_file = tmp_path / "roots.json"
    roots.save(roots_file)
    messages = [(e["vehicle"].encode(), wire(e)) for e in honest[:50]]
    messages += [(b"k", raw) for raw, _ in bad]
    messages += [(e["vehicle"].encode(), wire(e)) for e in honest[50:]]
    _publish(bootstrap, prefix + "telemetry", messages)

    data = tmp_path / "data"
    proc = _speed(_env(bootstrap, prefix, data), roots_file, "--until-idle", "4")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()

    realtime = _rows(data / "realtime")
    master = _rows(data / "master")
    want = sorted(e["event_id"] for e in honest)
    assert sorted(r["event_id"] for r in realtime) == want
    assert sorted(r["event_id"] for r in master) == want
    assert {r["verification"] for r in realtime} == {"verified"}
    letters = _dead_letters(bootstrap, prefix + "deadletter")
    assert sorted(reason for reason, _, _ in letters) == sorted(reason for _, reason in bad)
    by_reason = {reason: (value, headers) for reason, value, headers in letters}
    assert by_reason["bad_hash"][0] == tampered  # the original bytes
    assert by_reason["bad_hash"][1]["pcc-origin"].decode().startswith(prefix + "telemetry[")
    assert by_reason["bad_proof"][1]["pcc-detail"]


@pytest.mark.parametrize(
    ("master_flush_rows", "restart_on", "state"),
    [
        (None, "FnApiRunner", "worker"),
        (1_500, "FnApiRunner", "worker"),
        (1_500, "PrismRunner", "worker"),
        (1_500, "FnApiRunner", "keyed"),
    ],
    ids=["master-behind-the-view", "master-written-mid-stream", "restarted-on-prism", "keyed-state"],
)
def test_kill_9_mid_stream_then_restart_keeps_every_event_exactly_once(
    kafka_broker, tmp_path: Path, master_flush_rows: int | None, restart_on: str, state: str
) -> None:
    """``kill -9`` mid-stream, then a restart (on the same runner, or on another: the job's state
    is in its sinks' directory and the committed offsets, not in the runner; with keyed state, the
    sinks commit no offset past an event still in the shuffle or held by its vehicle's key)."""
    bootstrap = kafka_broker.bootstrap
    prefix = _topics(bootstrap)
    roots = InMemoryRoots()
    telemetry = SyntheticSource("cc-aurora", roots, checkpoint_every=200)
    garage = SyntheticSource("garage-net-03", roots, tier=2, checkpoint_every=200)
    start = int(time.time() * 1000) - 90 * DAY
    n = 24_000  # enough that the crash comes mid-stream at 10,000+ events/s
    sent: list[dict[str, Any]] = []
    for i in range(n):
        src = garage if i % 5 == 0 else telemetry
        sent.append(src.append(src.odometer(vehicle(i % 400), 1_000 + (i // 400) * 50, start + i * 60_000)))
    telemetry.checkpoint()
    garage.checkpoint()
    roots_file = tmp_path / "roots.json"
    roots.save(roots_file)
    _publish(
        bootstrap,
        prefix + "telemetry",
        [(e["vehicle"].encode(), wire(e)) for e in sent if e["source_id"] == "cc-aurora"],
    )
    _publish(
        bootstrap,
        prefix + "garage",
        [(e["vehicle"].encode(), wire(e)) for e in sent if e["source_id"] != "cc-aurora"],
    )

    data = tmp_path / "data"
    env = _env(bootstrap, prefix, data)
    if master_flush_rows is not None:  # master files written (and being written) when the crash comes
        env["PCC__SPEED__MASTER_FLUSH_ROWS"] = str(master_flush_rows)
    env["PCC__SPEED__STATE"] = state
    first = _speed(env, roots_file)  # runs forever: we crash it
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        visible = list((data / "realtime").glob("*.parquet")) if (data / "realtime").exists() else []
        master = list((data / "master").rglob("*.parquet")) if (data / "master").exists() else []
        if visible and (master_flush_rows is None or master):  # crash at the first committed segment
            break
        assert first.poll() is None, first.communicate()[0].decode()
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    before = len(_rows(data / "realtime"))
    assert 0 < before < n, f"the crash should come mid-stream, {before} of {n} rows were visible"
    in_master = len(_rows(data / "master"))
    # the default cadence (100k rows / 60 s) has written nothing yet; 1,500 rows has, at least once
    assert in_master == 0 if master_flush_rows is None else 0 < in_master <= before

    runner: tuple[str, ...] = ()
    if restart_on == "PrismRunner":
        from infra.prism import ensure_prism

        runner = ("--runner", "PrismRunner", f"--beam-option=--prism_location={ensure_prism()}",
                  "--beam-option=--environment_type=LOOPBACK")  # fmt: skip
    second = _speed(env, roots_file, "--until-idle", "4", *runner)
    out, _ = second.communicate(timeout=400)
    assert second.returncode == 0, out.decode()

    want = Counter(e["event_id"] for e in sent)
    assert Counter(r["event_id"] for r in _rows(data / "realtime")) == want
    assert Counter(r["event_id"] for r in _rows(data / "master")) == want
    assert _dead_letters(bootstrap, prefix + "deadletter") == []
    assert not list(data.rglob("*.tmp"))


def test_sigterm_stops_cleanly_with_everything_read_made_durable(kafka_broker, tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap
    prefix = _topics(bootstrap)
    roots = InMemoryRoots()
    src = SyntheticSource("cc-aurora", roots, checkpoint_every=100)
    start = int(time.time() * 1000) - 10 * DAY
    sent = [src.append(src.odometer(vehicle(i % 20), 100 + i * 5, start + i * 60_000)) for i in range(500)]
    src.checkpoint()
    roots_file = tmp_path / "roots.json"
    roots.save(roots_file)
    _publish(bootstrap, prefix + "insurer", [(e["vehicle"].encode(), wire(e)) for e in sent])
    data = tmp_path / "data"
    proc = _speed(_env(bootstrap, prefix, data), roots_file)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(_rows(data / "realtime")) < len(sent):
        assert proc.poll() is None
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    assert b"stopped: 500 events" in out
    assert sorted(r["event_id"] for r in _rows(data / "master")) == sorted(e["event_id"] for e in sent)


def test_a_run_leaves_no_kafka_client_behind(kafka_broker, tmp_path: Path) -> None:
    """Once ``SpeedRun.run()`` returns, no Kafka client thread of it is left (it would log reconnect
    errors once the broker is gone)."""
    import threading

    from speed.pipeline import SpeedRun

    bootstrap = kafka_broker.bootstrap
    prefix = _topics(bootstrap)
    roots = InMemoryRoots()
    src = SyntheticSource("cc-aurora", roots, checkpoint_every=50)
    start = int(time.time() * 1000) - DAY
    sent = [src.append(src.odometer(vehicle(i % 5), 100 + i, start + i * 60_000)) for i in range(100)]
    src.checkpoint()
    _publish(bootstrap, prefix + "telemetry", [(e["vehicle"].encode(), wire(e)) for e in sent])
    before = {t.ident for t in threading.enumerate()}
    config = _in_process(bootstrap, prefix, tmp_path)
    SpeedRun(config, FixedRoots(roots)).run()
    assert len(_rows(tmp_path / "master")) == 100
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
        if not left:
            break
        time.sleep(0.1)
    assert left == []


def _in_process(bootstrap: str, prefix: str, data_dir: Path, **settings: Any) -> Any:
    """A speed job run in this process over the prefix's topics, until 2 s without a record."""
    from speed.config import SpeedConfig

    return SpeedConfig(
        bootstrap=bootstrap,
        data_dir=data_dir,
        topics=(prefix + "telemetry", prefix + "garage", prefix + "insurer"),
        deadletter_topic=prefix + "deadletter",
        metrics_port=None,
        until_idle_s=2.0,
        **settings,
    )



def test_a_full_disk_stops_the_run_with_a_clear_error_and_a_restart_loses_nothing(
    kafka_broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk under the sinks fills up mid-stream (ENOSPC at the Parquet writer, at the second segment
    of the real-time view: the first is durable, the stream is not over)."""
    import errno

    import speed.master as master_module
    from speed.errors import DiskFull
    from speed.pipeline import SpeedRun

    bootstrap = kafka_broker.bootstrap
    prefix = _topics(bootstrap)
    roots = InMemoryRoots()
    src = SyntheticSource("cc-aurora", roots, checkpoint_every=100)
    start = int(time.time() * 1000) - 10 * DAY
    # enough events for several flushes at 10,000+ events/s (3,000 once fitted in the first ones)
    sent = [src.append(src.odometer(vehicle(i % 40), 100 + i, start + i * 60_000)) for i in range(12_000)]
    src.checkpoint()
    _publish(bootstrap, prefix + "telemetry", [(e["vehicle"].encode(), wire(e)) for e in sent])
    # many small flushes: the disk fills between two of them
    config = _in_process(bootstrap, prefix, tmp_path, poll_max_records=200, master_flush_rows=500)
    real_write = master_module.pq.write_table
    room = {"segments": 1}  # real-time segments that still fit

    def filling(table: Any, where: Any, **kw: Any) -> None:
        name = str(getattr(where, "name", ""))
        if room["segments"] <= 0:
            where.write(b"PAR1 half a file")  # what a writer leaves when the disk fills
            raise OSError(errno.ENOSPC, "No space left on device", name or None)
        if "realtime" in name:
            room["segments"] -= 1
        real_write(table, where, **kw)

    monkeypatch.setattr(master_module.pq, "write_table", filling)  # both sinks write through it
    with pytest.raises(DiskFull, match=r"no space left on the disk of .*the speed layer stopped"):
        SpeedRun(config, FixedRoots(roots)).run()
    durable = len(_rows(tmp_path / "realtime"))
    assert durable < len(sent), "the disk should fill before the end of the stream"
    assert not list(tmp_path.rglob("*.tmp")), "a failed write left a temporary file"

    monkeypatch.undo()  # space is back
    SpeedRun(config, FixedRoots(roots)).run()
    want = Counter(e["event_id"] for e in sent)
    assert Counter(r["event_id"] for r in _rows(tmp_path / "realtime")) == want
    assert Counter(r["event_id"] for r in _rows(tmp_path / "master")) == want
    assert _dead_letters(bootstrap, prefix + "deadletter") == []
