"""The demo's stream: the producers in a child process while the speed layer runs in this one.

:func:`stream` starts the producer SDK over every source's file (one child process) and the speed
layer here, shows events/s per stage (:mod:`infra.demo_progress`), sends the tampered events and the
replay straight to Kafka once the producers are done, and stops the speed layer when it has read every
partition to its end and nothing waits for a checkpoint.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from infra.demo_progress import PlainProgress, StageMeter
from pipelines.errors import PccStateError
from pipelines.settings import Settings

if TYPE_CHECKING:
    from infra.demo import DemoOptions, DemoResult

TAMPER_MARK = b'"odometer_km":'
Say = Callable[[str], None]


# -- streaming: producers in a child process, the speed layer here -----------------------------------------
class _QueueProgress:
    """What ``produce_file`` needs of a rich Progress, forwarded to the parent through a queue."""

    def __init__(self, q: Any) -> None:
        self.q = q
        self.last = 0.0

    def add_task(self, description: str, total: int | None = None) -> str:
        self.q.put(("task", description, total))
        return description

    def update(self, task: str, completed: int | None = None, description: str | None = None) -> None:
        now = time.monotonic()
        if now - self.last > 0.3:
            self.last = now
            self.q.put(("progress", task, completed))


def _produce_worker(settings: Settings, jobs: list[tuple[str, str, str]], q: Any) -> None:
    """Child process: every source's file through the producer SDK, one after the other."""
    try:
        from pipelines.cli.produce import produce_file
        from pipelines.producer import load_anchor
        from pipelines.vault import IdentityVault

        anchor = load_anchor(settings)
        with IdentityVault(settings) as vault:
            for path, source_id, kind in jobs:
                report = produce_file(
                    settings, path, source_id=source_id, kind=kind, anchor=anchor, vault=vault,
                    progress=_QueueProgress(q),  # type: ignore[arg-type]
                )  # fmt: skip
                q.put(("report", source_id, report))
        q.put(("done",))
    except BaseException as exc:
        q.put(("error", f"{type(exc).__name__}: {exc}"))


def inject_tampered(settings: Settings, tampered: int, replays: int) -> list[tuple[str, str]]:
    """Send copies of published events with one byte changed, and byte-for-byte replays, to Kafka."""
    import orjson
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from pipelines.topics import event_topics

    topic = next(t for t in event_topics(settings.kafka.topic_prefix) if t.endswith("garage"))
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    picked: list[Any] = []
    deadline = time.monotonic() + 30
    while len(picked) < tampered + replays and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=1000, max_records=200).values():
            picked += [r for r in records if TAMPER_MARK in r.value][: tampered + replays - len(picked)]
    consumer.close()
    if len(picked) < tampered + replays:
        raise PccStateError(f"only {len(picked)} events with an odometer on {topic} to tamper with")
    out: list[tuple[str, str]] = []
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for i, r in enumerate(picked):
        event_id = orjson.loads(r.value)["event_id"]
        if i < tampered:  # one digit more on the odometer, after the proof was made
            producer.send(topic, key=r.key, value=r.value.replace(TAMPER_MARK, TAMPER_MARK + b"1", 1))
            out.append(("bad_hash", event_id))
        else:
            producer.send(topic, key=r.key, value=r.value)
            out.append(("duplicate_event", event_id))
    producer.flush()
    producer.close()
    return out


def _log_ends(settings: Settings) -> dict[str, int]:
    from infra.kafka import describe_topics
    from pipelines.topics import event_topics

    infos = describe_topics(settings, names=list(event_topics(settings.kafka.topic_prefix)))
    return {f"{t.name}[{p}]": end for t in infos for p, end in t.end_offsets.items()}


def stream(  # noqa: C901, PLR0915 (the demo's stream phase in order)
    settings: Settings, result: DemoResult, options: DemoOptions, jobs: list[tuple[str, str, str]],
    progress: Any, *, say: Say | None = None, on_producers_done: Callable[[], None] | None = None,
) -> StageMeter:  # fmt: skip
    """Produce (child process) while the speed layer runs here; stop the speed layer once caught up.

    Events/s per stage (producers, Kafka, speed layer) go to the progress bars and, when ``say`` is
    given (the console is not a terminal), to a plain line every 10 s. ``on_producers_done`` is called
    once the producers are done (the demo starts the batch layer's Spark session then, while the
    speed layer catches up). Returns the meter, whose averages the demo reports per stage.
    """
    from speed.config import SpeedConfig
    from speed.metrics import METRICS
    from speed.pipeline import SpeedRun
    from speed.roots import ledger_roots_factory

    config = SpeedConfig.from_settings(settings, metrics_port=0, until_idle_s=None)
    speed_run = SpeedRun(config, ledger_roots_factory(settings))
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    child = ctx.Process(target=_produce_worker, args=(settings, jobs, q), name="pcc-demo-producers")
    tasks: dict[str, Any] = {}
    published: dict[str, int] = {}
    meter = StageMeter()
    plain = PlainProgress(say, meter) if say is not None else None
    all_task = progress.add_task("producers", total=result.simulated or None)
    speed_task = progress.add_task("speed layer", total=result.simulated or None)
    failure: list[str] = []
    finished = threading.Event()
    last = {"meter": 0.0, "ends": 0.0}
    ends_seen: dict[str, int] = {}

    def show(ends: dict[str, int] | None = None, force: bool = False) -> Any:
        """Counts of every stage into the meter and the bars (about once a second)."""
        now = time.monotonic()
        if not force and ends is None and now - last["meter"] < 1.0:
            return None
        if ends is None and now - last["ends"] >= 5.0:  # the log ends: one admin request
            last["ends"] = now
            with contextlib.suppress(Exception):
                ends = _log_ends(settings)
        if ends is not None:
            ends_seen.clear()
            ends_seen.update(ends)
        snap = METRICS.snapshot(ends)
        last["meter"] = now
        counts = {"producers": sum(published.values()), "speed layer": snap.events}
        if ends_seen:
            counts["Kafka"] = sum(ends_seen.values())
        meter.observe(counts)
        progress.update(all_task, completed=counts["producers"], description=meter.describe("producers"))
        # records on Kafka the speed layer has not read (partitions it has not reached included)
        lag = f"lag {max(sum(snap.lag.values()), counts.get('Kafka', 0) - snap.events, 0):,}"
        progress.update(
            speed_task, completed=snap.events,
            description=f"{meter.describe('speed layer')}: {snap.accepted:,} accepted, "
            f"{snap.dead_letters} dead letters, {lag}",
        )  # fmt: skip
        if plain is not None:
            plain.tick(f"{snap.accepted:,} accepted, {snap.dead_letters} dead letters, {lag}")
        return snap

    def watch() -> None:
        """Drain the producers' reports, inject the tampered events, stop the speed layer once caught up."""
        try:
            while True:
                try:
                    msg = q.get(timeout=0.5)
                except queue.Empty:
                    if not child.is_alive() and q.empty():
                        raise PccStateError(
                            f"the producer process died (exit code {child.exitcode})"
                        ) from None
                    show()
                    continue
                if msg[0] == "task":
                    tasks[msg[1]] = progress.add_task(msg[1], total=msg[2], visible=plain is None)
                elif msg[0] == "progress":
                    published[msg[1]] = msg[2]
                    progress.update(tasks[msg[1]], completed=msg[2])
                elif msg[0] == "report":
                    report = msg[2]
                    result.produced[msg[1]] = published[msg[1]] = report.published
                    result.rejected[msg[1]] = sum(report.rejected.values())
                    result.gas["anchoring"] = result.gas.get("anchoring", 0) + report.gas_used
                    progress.update(tasks[msg[1]], completed=report.published + result.rejected[msg[1]])
                elif msg[0] == "error":
                    raise PccStateError(f"producing failed: {msg[1]}")
                else:
                    break
                show()
            show(force=True)
            meter.finish("producers")
            if on_producers_done is not None:
                on_producers_done()
            result.injected = inject_tampered(settings, options.tampered, options.replays)
            while not finished.is_set():
                ends = _log_ends(settings)
                snap = show(ends)
                if (
                    snap.lag
                    and len(snap.lag) == len(ends)
                    and not any(snap.lag.values())
                    and not snap.pending
                ):
                    result.kafka_records = sum(ends.values())
                    show(ends, force=True)
                    meter.finish("Kafka")
                    meter.finish("speed layer")
                    break
                time.sleep(0.25)
        except BaseException as exc:
            failure.append(str(exc))
        finally:
            speed_run.stop()

    interrupted = threading.Event()

    def on_interrupt(*_: object) -> None:  # Beam would wrap a KeyboardInterrupt: stop the source instead
        interrupted.set()
        speed_run.stop()

    child.start()
    watcher = threading.Thread(target=watch, name="pcc-demo-watch", daemon=True)
    watcher.start()
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        speed_run.run()
    finally:
        signal.signal(signal.SIGINT, previous)
        finished.set()
        if child.is_alive():
            child.terminate()
        child.join(timeout=30)
        watcher.join(timeout=30)
    if interrupted.is_set():
        raise KeyboardInterrupt
    if failure:
        raise PccStateError(failure[0])
    snap = METRICS.snapshot()
    result.speed_accepted = snap.accepted
    return meter
