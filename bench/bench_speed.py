"""Speed layer: ``python -m bench.bench_speed [--scale F] [--bootstrap HOST:PORT]``.

Starts its own Kafka broker on free ports under a temporary directory and stops it
at the end (``--bootstrap`` uses a running one instead).  Seven figures:

1. **Throughput, end to end** (Kafka -> verify/score/flag -> real-time view and
   master dataset durable): the Beam pipeline on ``FnApiRunner`` versus, in the
   same run and on the same records, a plain Python loop (one KafkaConsumer,
   the same :class:`~speed.process.EventProcessor` and
   :class:`~speed.sinks.SinkWriter`).  The ratio Beam / plain is the figure we
   track (target >= 0.5).
2. **Backlog**: the same comparison on a backfill of 100,000 readings of 2,000
   cars spread over 730 event dates (the demo's shape), with the number of
   master-dataset files each wrote.
3. **Freshness**: p50/p99 from produce (the Kafka record timestamp) to visible
   in the real-time view (the segment file renamed), at a steady input rate
   (default 2,000 events/s) produced by another process, with master writes
   every 5 s inside the window.
4. **Memory**: per-vehicle fraud state for 1M vehicles (target < 1 GB).
5. **Ordering**: the Beam pipeline with the ordering buffer (events applied in
   ``sort_key`` order once every partition is read past them) versus, in the
   same run and on the same records, the pipeline applying each poll as it
   comes (``order_hold_ms=None``, the order before issue 18) (target >= 0.8).

6. **Bad input at speed**: the throughput run's events with 1 % tampered after their proof
   was made (one more digit on the odometer), 1 % replayed (the same record again) and 1 %
   malformed (cut JSON, or an envelope without its vehicle): every one must be dead-lettered
   with its reason (``bad_hash``, ``duplicate_event``, ``unparseable``, ``bad_schema``) and
   every honest event accepted.  Ratio: bad records dead-lettered with the right reason /
   bad records sent (target 1.0).

7. **Keyed state**: the Beam pipeline with per-vehicle state in Beam keyed state
   (``speed.state: keyed``, a shuffle keyed by vehicle) versus, in the same run and on the
   same records, per-worker state (the fused default), on FnApiRunner (``keyed``) and on
   Prism (``keyed_prism``, its SDK worker in this process), with the events spread over
   20,000 vehicles (one per vehicle per poll) and over 500 (about ten) (target >= 0.8).

``--figures backlog freshness`` measures only those.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from bench.common import record
from bench.stack import bench_settings, running_broker
from speed.config import SpeedConfig
from speed.metrics import METRICS
from speed.pipeline import SpeedRun
from speed.process import EventProcessor
from speed.roots import InMemoryRoots
from speed.rules import RulesAdapter
from speed.runtime import settle_collector
from speed.sinks import SinkWriter
from speed.source import KafkaRecord
from speed.state import VehicleStates
from tests.fixtures.synthetic import FixedRoots, SyntheticSource, vehicle, wire

DAY = 86_400_000
FIGURES = ("throughput", "backlog", "freshness", "memory", "ordering", "bad_input", "keyed", "keyed_prism")



def _topics(bootstrap: str) -> str:
    from kafka.admin import KafkaAdminClient, NewTopic

    prefix = "bench" + uuid.uuid4().hex[:6] + "."
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics(
        [NewTopic(prefix + t, 4, 1) for t in ("telemetry", "garage", "insurer")]
        + [NewTopic(prefix + "deadletter", 1, 1)]
    )
    admin.close()
    return prefix


def _generate(n: int, roots: InMemoryRoots, vehicles: int = 20_000) -> list[tuple[bytes, bytes]]:
    src = SyntheticSource("cc-aurora", roots, checkpoint_every=1024)
    start = int(time.time() * 1000) - 60 * DAY
    envs = []
    for i in range(n):
        envs.append(
            src.append(src.odometer(vehicle(i % vehicles), 1_000 + (i // vehicles) * 60, start + i * 1_000))
        )
    src.checkpoint()
    return [(e["vehicle"].encode(), wire(e)) for e in envs]


def _generate_backlog(
    n: int, roots: InMemoryRoots, vehicles: int = 2_000, days: int = 730
) -> dict[str, list[tuple[bytes, bytes]]]:
    """A fleet's history as a backfill: ``n`` readings of ``vehicles`` cars over ``days`` days, in time order.

    Telemetry (``cc-aurora``) and garage (``garage-net-03``, every fifth reading)
    sources, so a poll of either topic spans many event dates, as in ``pcc demo``.
    """
    telemetry = SyntheticSource("cc-aurora", roots, checkpoint_every=1024)
    garage = SyntheticSource("garage-net-03", roots, tier=2, checkpoint_every=1024)
    end = int(time.time() * 1000) - 2 * DAY
    start = end - days * DAY
    step = (end - start) // n
    out: dict[str, list[tuple[bytes, bytes]]] = {"telemetry": [], "garage": []}
    envs: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        car = i % vehicles
        src, topic = (garage, "garage") if i % 5 == 0 else (telemetry, "telemetry")
        km = 1_000 + (i // vehicles) * 40
        envs.append((topic, src.append(src.odometer(vehicle(car), km, start + i * step))))
    telemetry.checkpoint()
    garage.checkpoint()
    for topic, env in envs:
        out[topic].append((env["vehicle"].encode(), wire(env)))
    return out


def _master_files(config: SpeedConfig) -> int:
    return sum(1 for _ in config.master_dir.rglob("*.parquet"))


def _publish(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    from kafka import KafkaProducer

    # acks=1 without idempotence, said so (else the client warns that it turns idempotence off)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024, acks=1, enable_idempotence=False
    )
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def _config(bootstrap: str, prefix: str, data_dir: Path, **kw: Any) -> SpeedConfig:
    return SpeedConfig(
        bootstrap=bootstrap,
        data_dir=data_dir,
        topics=(prefix + "telemetry", prefix + "garage", prefix + "insurer"),
        deadletter_topic=prefix + "deadletter",
        metrics_port=None,
        **kw,
    )


def plain_loop(config: SpeedConfig, roots: InMemoryRoots, expected: int) -> float:
    """The reference: the same per-event logic and sinks in a plain consumer loop; events/s."""
    from kafka import KafkaConsumer, TopicPartition

    processor = EventProcessor(config, roots)
    settle_collector(config.gc_threshold)  # as build_runtime does for the pipeline's worker
    sinks = SinkWriter(
        config.realtime_dir,
        config.master_dir,
        config.state_dir,
        "plain",
        config.flush_interval_ms,
        None,
        master_flush_rows=config.master_flush_rows,
        master_flush_interval_s=config.master_flush_interval_s,
    )
    consumer = KafkaConsumer(
        bootstrap_servers=config.bootstrap,
        enable_auto_commit=False,
        max_poll_records=config.poll_max_records,
        fetch_max_bytes=16 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    tps = [
        TopicPartition(t, p) for t in config.topics for p in sorted(consumer.partitions_for_topic(t) or ())
    ]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    done = 0
    t0: float | None = None
    while done < expected:
        for batch in consumer.poll(
            timeout_ms=config.poll_timeout_ms, max_records=config.poll_max_records
        ).values():
            if t0 is None:
                t0 = time.monotonic()
            records = [
                KafkaRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value) for r in batch
            ]
            result = processor.process_batch(records, int(time.time() * 1000))
            sinks.add(records, result)
            done += len(records)
            if sinks.due():
                sinks.flush(processor.pending_floor())
    sinks.flush(processor.pending_floor(), final=True)
    sinks.close()
    consumer.close()
    assert t0 is not None
    return expected / (time.monotonic() - t0)


def beam_run(config: SpeedConfig, roots: InMemoryRoots, expected: int) -> float:
    run = SpeedRun(config, FixedRoots(roots))
    run.run()
    rows = METRICS.snapshot().rows_flushed
    if rows != expected:
        raise RuntimeError(f"the pipeline wrote {rows} rows, expected {expected}")
    assert METRICS.first_event_at is not None and METRICS.last_rows_at is not None
    return expected / (METRICS.last_rows_at - METRICS.first_event_at)


def _steady_producer(
    bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], rate: float, out: Any, durable: bool = False
) -> None:
    """Send ``messages`` at ``rate``; ``durable``: as the platform's producer sends (acks=all, idempotent),
    which a cluster losing a node needs, else acks=1 (one broker: the least the clock measures)."""
    from kafka import KafkaProducer

    acks: dict[str, Any] = {"acks": "all", "enable_idempotence": True} if durable else {"acks": 1}
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, **acks)
    stamps: list[tuple[int, int, int]] = []
    futures = []
    start = time.monotonic()
    for i, (key, value) in enumerate(messages):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        futures.append(producer.send(topic, key=key, value=value))
    producer.flush()
    for f in futures:
        md = f.get(timeout=120)
        stamps.append((md.partition, md.offset, md.timestamp))
    producer.close()
    out.put(stamps)


def visibility(
    config: SpeedConfig,
    roots: InMemoryRoots,
    messages: list[tuple[bytes, bytes]],
    rate: float,
    *,
    durable: bool = False,
    meanwhile: Any = None,
) -> tuple[list[tuple[int, float]], float, int]:
    """Run the speed layer while ``messages`` are produced at ``rate`` into ``config.topics[0]``.

    Returns (produce time ms, visible time ms) per event seen in the real-time view, the
    achieved rate and how many (partition, offset) the view holds more than once.
    ``meanwhile(t0)`` runs in a thread from the moment the producer starts (a fault to inject).
    """
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if config.realtime_dir.exists():
                for f in os.scandir(config.realtime_dir):
                    if f.name.endswith(".parquet") and f.name not in seen:
                        seen[f.name] = time.time() * 1000
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    queue: Any = mp.get_context("spawn").Queue()
    producer = mp.get_context("spawn").Process(
        target=_steady_producer, args=(config.bootstrap, config.topics[0], messages, rate, queue, durable)
    )
    run = SpeedRun(config, FixedRoots(roots))
    runner = threading.Thread(target=run.run)
    runner.start()
    time.sleep(3.0)  # let the pipeline start before the clock runs
    t0 = time.monotonic()
    producer.start()
    fault = threading.Thread(target=meanwhile, args=(t0,)) if meanwhile is not None else None
    if fault is not None:
        fault.start()
    stamps = queue.get(timeout=900)
    achieved = len(messages) / (time.monotonic() - t0)
    producer.join()
    runner.join()
    if fault is not None:
        fault.join()
    stop.set()
    watcher.join()
    produced = {(p, o): ts for p, o, ts in stamps}
    pairs: list[tuple[int, float]] = []
    held: set[tuple[int, int]] = set()
    repeated = 0
    for name, visible in seen.items():
        table = pq.read_table(config.realtime_dir / name, columns=["partition", "offset"])
        for key in zip(table.column("partition").to_pylist(), table.column("offset").to_pylist(), strict=True):
            if key in held:
                repeated += 1
            held.add(key)
            if key in produced:
                pairs.append((produced[key], visible))
    return pairs, achieved, repeated


def freshness(
    config: SpeedConfig, roots: InMemoryRoots, messages: list[tuple[bytes, bytes]], rate: float
) -> tuple[float, float, float]:
    """p50, p99 (ms) produce -> visible in the real-time view, and the achieved rate."""
    pairs, achieved, _ = visibility(config, roots, messages, rate)
    latencies = sorted(visible - produced for produced, visible in pairs)
    if len(latencies) != len(messages):
        raise RuntimeError(f"{len(latencies)} of {len(messages)} events became visible")
    return latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)], achieved


def _with_bad_input(
    honest: list[tuple[bytes, bytes]], every: int = 100
) -> tuple[list[tuple[bytes, bytes]], dict[str, int]]:
    """``honest`` with, per ``every`` records, one tampered, one replayed and one malformed; and how many
    dead letters of each reason that must give."""
    import orjson

    out: list[tuple[bytes, bytes]] = []
    replays: list[tuple[bytes, bytes]] = []
    want = {"bad_hash": 0, "duplicate_event": 0, "unparseable": 0, "bad_schema": 0}
    for i, (key, value) in enumerate(honest):
        if i % every == every // 2:  # changed after the proof was made: the leaf no longer matches
            out.append((key, value.replace(b'"odometer_km":', b'"odometer_km":1', 1)))
            want["bad_hash"] += 1
            continue
        out.append((key, value))
        if i % every == 0:
            replays.append((key, value))
        if i % every == every // 4:  # malformed: alternately cut JSON and an envelope without its vehicle
            if (i // every) % 2:
                out.append((key, value[: len(value) // 2]))
                want["unparseable"] += 1
            else:
                env = orjson.loads(value)
                del env["vehicle"]
                out.append((key, orjson.dumps(env)))
                want["bad_schema"] += 1
    want["duplicate_event"] = len(replays)
    return out + replays, want  # the replays come after the events they copy


def bad_input(bootstrap: str, work: Path, n: int) -> tuple[dict[str, int], dict[str, int], int, float]:
    """Dead letters by reason wanted and got, honest events accepted, events/s over all records."""
    from collections import Counter

    from kafka import KafkaConsumer, TopicPartition

    roots = InMemoryRoots()
    prefix = _topics(bootstrap)
    records, want = _with_bad_input(_generate(n, roots))
    _publish(bootstrap, prefix + "telemetry", records)
    config = _config(bootstrap, prefix, work / "bad-input", until_idle_s=2.0)
    run = SpeedRun(config, FixedRoots(roots))
    run.run()
    assert METRICS.first_event_at is not None and METRICS.last_rows_at is not None
    rate = len(records) / (METRICS.last_rows_at - METRICS.first_event_at)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3_000)
    dead = TopicPartition(prefix + "deadletter", 0)
    consumer.assign([dead])
    consumer.seek_to_beginning(dead)
    got = Counter(dict(r.headers)["pcc-reason"].decode() for r in consumer)
    consumer.close()
    accepted = sum(pq.read_metadata(f).num_rows for f in config.realtime_dir.glob("*.parquet"))
    return want, dict(got), accepted, rate


def state_memory(vehicles: int) -> float:
    """MB of per-vehicle fraud state for ``vehicles`` vehicles (one reading each, with a location)."""
    rules = RulesAdapter()
    gc.collect()
    tracemalloc.start()
    states = VehicleStates()
    base = int(time.time() * 1000)
    for i in range(vehicles):
        env = {
            "event_id": str(uuid.UUID(int=i, version=4)),
            "event_type": "odometer_reading",
            "source_id": "cc-aurora",
            "payload": {
                "odometer_km": 10_000 + i % 1000,
                "location": {"lat": 48.1 + i % 7 / 10, "lon": 11.5},
            },
            "proof": {"log_index": i},
        }
        state, _ = rules.fraud(None, env, base + i, True)
        states.put(vehicle(i), state)
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_speed", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--bootstrap", default=None, help="a running Kafka broker (default: start one for the run)"
    )
    parser.add_argument(
        "--rate", type=float, default=2000.0, help="steady input rate for freshness (events/s)"
    )
    parser.add_argument(
        "--figures",
        nargs="*",
        default=list(FIGURES),
        choices=FIGURES,
        help="which figures to measure (default: all)",
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    try:
        with contextlib.ExitStack() as stack:
            bootstrap = args.bootstrap
            if bootstrap is None and set(args.figures) - {"memory"}:
                bootstrap = stack.enter_context(running_broker(bench_settings(work / "stack")))
            _measure(args, bootstrap or "", work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _keyed(bootstrap: str, work: Path, scale: float, runner: str, vehicles: int) -> None:
    """Keyed state against per-worker state on one runner, same records, same run.

    ``vehicles``: the fleet the events are spread over; a poll (up to 5,000 records) holds about
    5,000 / ``vehicles`` events of each vehicle, and keyed state costs per vehicle touched.
    """
    n = max(2_000, int(40_000 * scale))
    roots = InMemoryRoots()
    prefix = _topics(bootstrap)
    _publish(bootstrap, prefix + "telemetry", _generate(n, roots, vehicles=vehicles))
    args: tuple[str, ...] = ()
    if runner == "PrismRunner":
        from infra.prism import ensure_prism

        args = (f"--prism_location={ensure_prism()}", "--environment_type=LOOPBACK")
    tag = f"{runner.removesuffix('Runner').lower()}.vehicles_{vehicles}"
    runs: dict[str, float] = {}
    for state in ("worker", "keyed"):
        config = _config(
            bootstrap, prefix, work / f"{tag}-{state}", until_idle_s=2.0, runner=runner, state=state,
            pipeline_args=args,
        )  # fmt: skip
        runs[state] = beam_run(config, roots, n)
        print(f"  {runner}, {vehicles:,} vehicles, state {state}: {runs[state]:,.0f} events/s", flush=True)
    record(
        f"speed.keyed_state.{tag}",
        {
            "keyed_events_per_s": round(runs["keyed"]),
            "events": n,
            "vehicles": vehicles,
            "ratio_is": f"beam {runner} with keyed state / the same with per-worker state",
        },
        {"worker_events_per_s": round(runs["worker"])},
        runs["keyed"] / runs["worker"],
    )


def _measure(args: argparse.Namespace, bootstrap: str, work: Path) -> None:
    """The figures asked for, against the broker at ``bootstrap``."""
    if "throughput" in args.figures:
        n = max(2_000, int(40_000 * args.scale))
        roots = InMemoryRoots()
        prefix = _topics(bootstrap)
        messages = _generate(n, roots)
        _publish(bootstrap, prefix + "telemetry", messages)
        plain = plain_loop(_config(bootstrap, prefix, work / "plain"), roots, n)
        beam = beam_run(_config(bootstrap, prefix, work / "beam", until_idle_s=2.0), roots, n)
        record(
            "speed.throughput",
            {"beam_events_per_s": round(beam), "events": n, "ratio_is": "beam FnApiRunner / plain loop"},
            {"plain_loop_events_per_s": round(plain)},
            beam / plain,
        )
    if "ordering" in args.figures:
        n = max(2_000, int(40_000 * args.scale))
        roots = InMemoryRoots()
        prefix = _topics(bootstrap)
        _publish(bootstrap, prefix + "telemetry", _generate(n, roots))
        per_poll = beam_run(
            _config(bootstrap, prefix, work / "per-poll", until_idle_s=2.0, order_hold_ms=None), roots, n
        )
        ordered = beam_run(_config(bootstrap, prefix, work / "ordered", until_idle_s=2.0), roots, n)
        record(
            "speed.ordering",
            {
                "ordered_events_per_s": round(ordered),
                "events": n,
                "ratio_is": "beam with the ordering buffer / beam applying each poll as it comes",
            },
            {"per_poll_events_per_s": round(per_poll)},
            ordered / per_poll,
        )
    for figure, runner in (("keyed", "FnApiRunner"), ("keyed_prism", "PrismRunner")):
        if figure in args.figures:
            for vehicles in (20_000, 500):  # one event per vehicle per poll; about ten
                _keyed(bootstrap, work, args.scale, runner, vehicles)
    if "backlog" in args.figures:
        n = max(5_000, int(100_000 * args.scale))
        roots = InMemoryRoots()
        prefix = _topics(bootstrap)
        for topic, messages in _generate_backlog(n, roots).items():
            _publish(bootstrap, prefix + topic, messages)
        plain_config = _config(bootstrap, prefix, work / "backlog-plain")
        plain = plain_loop(plain_config, roots, n)
        beam_config = _config(bootstrap, prefix, work / "backlog-beam", until_idle_s=2.0)
        beam = beam_run(beam_config, roots, n)
        record(
            "speed.backlog",
            {
                "beam_events_per_s": round(beam),
                "events": n,
                "event_dates": 730,
                "master_files": _master_files(beam_config),
                "realtime_segments": sum(1 for _ in beam_config.realtime_dir.glob("*.parquet")),
                "ratio_is": "beam FnApiRunner / plain loop",
            },
            {"plain_loop_events_per_s": round(plain), "plain_master_files": _master_files(plain_config)},
            beam / plain,
        )
    if "freshness" in args.figures:
        fresh_n = max(2_000, int(args.rate * 20 * args.scale))
        fresh_roots = InMemoryRoots()
        fresh_prefix = _topics(bootstrap)
        fresh_messages = _generate(fresh_n, fresh_roots)
        # master writes every 5 s (not 60): the measured window includes several of them
        p50, p99, achieved = freshness(
            _config(bootstrap, fresh_prefix, work / "fresh", max_events=fresh_n, master_flush_interval_s=5.0),
            fresh_roots,
            fresh_messages,
            args.rate,
        )
        record(
            "speed.freshness",
            {
                "p50_ms": round(p50),
                "p99_ms": round(p99),
                "rate_events_per_s": round(achieved),
                "events": fresh_n,
            },
            {"target_p99_ms": 1000},
            p99 / 1000,
        )
    if "bad_input" in args.figures:
        n = max(2_000, int(40_000 * args.scale))
        want, got, accepted, rate = bad_input(bootstrap, work, n)
        caught = sum(min(got.get(reason, 0), count) for reason, count in want.items())
        sent = sum(want.values())
        record(
            "speed.bad_input",
            {
                "events_per_s": round(rate),
                "honest_events": n - want["bad_hash"],
                "honest_accepted": accepted,
                "dead_letters_wanted": want,
                "dead_letters_got": got,
                "ratio_is": "bad records dead-lettered with the right reason / bad records sent (target 1.0)",
            },
            {"bad_records": sent},
            caught / sent,
        )
    if "memory" in args.figures:
        vehicles = max(10_000, int(1_000_000 * args.scale))
        mb = state_memory(vehicles)
        record(
            "speed.state_memory",
            {
                "vehicles": vehicles,
                "state_mb": round(mb, 1),
                "bytes_per_vehicle": round(mb * 1e6 / vehicles),
            },
            {"target_mb_per_million": 1024},
            (mb * 1_000_000 / vehicles) / 1024,
        )


if __name__ == "__main__":
    raise SystemExit(main())
