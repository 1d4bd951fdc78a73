"""The platform's main job end to end, as library calls into each layer.

``run_demo(settings, options)`` simulates a fleet, registers its producers on
the ledger, streams the fleet through the producer SDK into Kafka (in a
child process) while the speed layer verifies it (in this process), injects
tampered events and a replay straight onto Kafka, runs the batch job, serves
the merged views, funds a consumer, runs paid queries, settles each on the
Marketplace and evaluates the fraud scores against the simulator's labels.
Every phase is timed; :mod:`infra.demo_report` prints and draws the result.

With ``options.start_services`` the demo starts its own broker and chain node
(:mod:`infra.demo_stack`); without, ``settings`` must point at running ones
(the end-to-end test passes the session's broker and anvil node).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pipelines.errors import PccStateError
from pipelines.settings import Settings

#: Serving prices per data category, cents per row (a passport report: cents per report), voted by
#: governance at start.
PRICES: dict[str, int] = {
    "mileage": 1, "maintenance": 2, "inspection": 2, "accident": 3, "owner_identity": 5,
    "precise_location": 4, "fraud_score": 10, "source_reputation": 1, "passport_report": 50,
}  # fmt: skip
CONSUMER_FUNDS = 5_000_000  # PCC_token cents minted to the demo consumer (play money)
CONSUMER_DEPOSIT = 2_000_000  # of which escrowed on the Marketplace
TAMPER_MARK = b'"odometer_km":'

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoOptions:
    vehicles: int = 2000
    days: int = 730
    seed: int = 1
    fraud_rate: float = 0.1
    tampered: int = 3  # events with one byte changed after their proof, sent straight to Kafka
    replays: int = 1  # events sent again byte for byte
    start_services: bool = True  # False: settings point at a running broker and chain node
    keep_running: bool = False


@dataclass
class PaidQuery:
    name: str
    sql: str
    rows: int
    sources_in_rows: dict[str, int]  # source_id -> rows returned (when the query selects it)
    receipt: dict[str, Any]
    settle_tx: str
    settle_gas: int
    deltas: dict[str, int]  # "consumer", "treasury", and each producer: balance change by the settlement


@dataclass
class DemoResult:
    settings: Settings
    fleet_dir: Path
    simulated: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)  # source -> events accepted and published
    rejected: dict[str, int] = field(default_factory=dict)
    injected: list[tuple[str, str]] = field(default_factory=list)  # (expected reason, event id)
    kafka_records: int = 0
    speed_accepted: int = 0
    dead_letters: list[tuple[str, str | None]] = field(default_factory=list)  # (reason, event id)
    master_rows: int = 0
    verified_share: float = 0.0
    batch_rows: dict[str, int] = field(default_factory=dict)
    batch_version: str = ""
    serving_rows: int = 0
    serving_events: int = 0
    evaluation: Any = None  # batch.evaluate.Evaluation
    queries: list[PaidQuery] = field(default_factory=list)
    paid: dict[str, int] = field(default_factory=dict)  # producer -> Marketplace credit at the end
    treasury: int = 0
    gas: dict[str, int] = field(default_factory=dict)
    phases: list[tuple[str, float]] = field(default_factory=list)
    flagged_vehicle: str | None = None
    passport_url: str | None = None
    share_url: str | None = None  # the owner's share link to the flagged car's passport (7 days)
    api_url: str | None = None
    chart: Path | None = None
    kept_running: bool = False


class _Phases:
    def __init__(self, result: DemoResult, say: Say) -> None:
        self.result, self.say = result, say

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.say(f"[bold]▶ {name}[/]")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t0
            self.result.phases.append((name, seconds))
            self.say(f"  {name}: {seconds:.1f} s")


def simulation_start(days: int, today: date | None = None) -> date:
    """The simulator's default start, moved back if the window would not end before today."""
    from pipelines.simulator import SimulationConfig

    default = SimulationConfig().start
    latest = (today or date.today()) - timedelta(days=days + 2)
    return min(default, latest)


# -- the ledger ---------------------------------------------------------------------------------------
def setup_ledger(settings: Settings, sources: list[dict[str, Any]]) -> Any:
    """Deploy, register each producer, hand every admin role over to governance, vote prices
    (propose, vote, queue in the timelock, execute), fund the consumer; returns the ledger client."""
    from ledger.client import LedgerClient
    from ledger.config import DEV_KEYS
    from ledger.keys import address_of, category_key
    from ledger.onboarding import DEV_MEMBERS, deploy_consortium, register_source
    from serving.market.chain import CATEGORIES

    deploy_consortium(settings)
    client = LedgerClient.from_settings(settings)
    for src in sources:
        register_source(settings, src["id"], src["kind"], int(src["tier"]), client=client)
    client.governance.handover()  # from here on only a vote changes a role or a parameter
    voter = DEV_KEYS[DEV_MEMBERS[0][0]]
    client.tokens.delegate(address_of(voter), voter)
    actions = [
        client.governance.call_data("Parameters", "setPrice", category_key(c), PRICES.get(c, 1))
        for c in CATEGORIES
    ]
    client.governance.enact(actions, "Serving prices of the demo", [voter])
    consumer = consumer_key()
    client.tokens.mint(address_of(consumer), CONSUMER_FUNDS, "SEPA-demo-consumer")
    client.tokens.approve(client.market.address, CONSUMER_DEPOSIT, consumer)
    client.market.deposit(CONSUMER_DEPOSIT, consumer)
    return client


def consumer_key() -> str:
    from ledger.config import DEV_KEYS

    return DEV_KEYS[5]


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


def stream(
    settings: Settings, result: DemoResult, options: DemoOptions, jobs: list[tuple[str, str, str]],
    progress: Any,
) -> None:  # fmt: skip
    """Produce (child process) while the speed layer runs here; stop the speed layer once caught up."""
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
    speed_task = progress.add_task("speed layer", total=None)
    failure: list[str] = []
    finished = threading.Event()

    def watch() -> None:
        """Drain the producers' reports, inject the tampered events, stop the speed layer once caught up."""
        try:
            while True:
                try:
                    msg = q.get(timeout=1.0)
                except queue.Empty:
                    if not child.is_alive() and q.empty():
                        raise PccStateError(
                            f"the producer process died (exit code {child.exitcode})"
                        ) from None
                    _show_speed()
                    continue
                if msg[0] == "task":
                    tasks[msg[1]] = progress.add_task(msg[1], total=msg[2])
                elif msg[0] == "progress":
                    progress.update(tasks[msg[1]], completed=msg[2])
                elif msg[0] == "report":
                    report = msg[2]
                    result.produced[msg[1]] = report.published
                    result.rejected[msg[1]] = sum(report.rejected.values())
                    result.gas["anchoring"] = result.gas.get("anchoring", 0) + report.gas_used
                    progress.update(tasks[msg[1]], completed=report.published + result.rejected[msg[1]])
                elif msg[0] == "error":
                    raise PccStateError(f"producing failed: {msg[1]}")
                else:
                    break
            result.injected = inject_tampered(settings, options.tampered, options.replays)
            while not finished.is_set():
                ends = _log_ends(settings)
                snap = _show_speed(ends)
                if (
                    snap.lag
                    and len(snap.lag) == len(ends)
                    and not any(snap.lag.values())
                    and not snap.pending
                ):
                    result.kafka_records = sum(ends.values())
                    break
                time.sleep(0.5)
        except BaseException as exc:
            failure.append(str(exc))
        finally:
            speed_run.stop()

    def _show_speed(ends: dict[str, int] | None = None) -> Any:
        snap = METRICS.snapshot(ends)
        progress.update(
            speed_task, completed=snap.events,
            description=f"speed layer: {snap.accepted:,} accepted, {snap.dead_letters} dead letters, "
            f"lag {sum(snap.lag.values()):,}",
        )  # fmt: skip
        return snap

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


# -- the batch layer ------------------------------------------------------------------------------------
def run_batch_layer(settings: Settings, result: DemoResult, client: Any, spark: Any, say: Say) -> None:
    import pyarrow.parquet as pq

    from batch.config import BatchConfig
    from batch.jobs import run_batch
    from batch.publish import read_current

    record = run_batch(
        settings, full=True, spark=spark, progress=lambda stage, i, n: say(f"  batch {i + 1}/{n}: {stage}")
    )
    result.batch_rows = dict(record.rows_out)
    result.batch_version = record.version
    config = BatchConfig.from_settings(settings)
    current = read_current(config)
    assert current is not None
    reputation = pq.read_table(config.batch_dir / current["views"]["source_reputation"]).to_pylist()
    scores = {r["source_id"]: round(10_000 * float(r["reputation"])) for r in reputation}
    tx = client.sources.publish_reputations(scores)
    result.gas["reputations"] = int(tx["gasUsed"])


def run_demo(
    settings: Settings, options: DemoOptions = DemoOptions(), *, spark: Any = None, console: Any = None
) -> DemoResult:
    """The main job end to end on ``settings`` (see the module docstring); returns what happened."""
    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from infra import demo_market as market
    from infra import demo_stack as stack
    from infra.demo_readback import evaluate_fraud, master_stats, read_dead_letters
    from pipelines.simulator import SimulationConfig, write_fleet

    console = console or Console(stderr=True)
    say: Say = console.print
    fleet_dir = settings.data_dir / "fleet"
    result = DemoResult(settings=settings, fleet_dir=fleet_dir)
    phase = _Phases(result, say)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    own_spark = spark is None
    try:
        if options.start_services:
            with phase("start the Kafka broker"):
                stack.start_broker(settings, say)
            with phase("start the chain node"):
                stack.start_chain(settings)
        else:
            from infra.kafka import ensure_topics

            ensure_topics(settings)
        with phase("simulate the fleet"):
            sim = SimulationConfig(
                vehicles=options.vehicles, days=options.days, seed=options.seed,
                start=simulation_start(options.days), fraud_rate=options.fraud_rate,
            )  # fmt: skip
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("vehicles", total=options.vehicles)
                summary = write_fleet(sim, fleet_dir, on_vehicle=lambda _n: progress.advance(task))
            result.simulated, result.labels = summary.events, dict(summary.labels)
            sources = json.loads((fleet_dir / "fleet.json").read_text())["sources"]
        with phase("deploy, register the producers, hand over to governance, vote prices, fund a consumer"):
            from ledger.chain import connect_url

            first_block = int(connect_url(settings.ledger.rpc_url).eth.block_number) + 1
            client = setup_ledger(settings, sources)
        jobs = [
            (str(fleet_dir / "events" / f"{s['id']}.jsonl"), s["id"], s["kind"])
            for s in sources
            if (fleet_dir / "events" / f"{s['id']}.jsonl").exists()
        ]
        with phase("stream: producers → Kafka → speed layer (until caught up)"):
            with Progress(*columns, console=console) as progress:
                stream(settings, result, options, jobs, progress)
            result.dead_letters = read_dead_letters(settings)
            result.master_rows, result.verified_share = master_stats(settings)
        with phase("batch layer: rebuild, audit, publish; reputations on chain"):
            if spark is None:
                from batch.session import get_spark

                b = settings.batch
                spark = get_spark(b.master, b.driver_memory, b.shuffle_partitions)
            run_batch_layer(settings, result, client, spark, say)
        with phase("evaluate the fraud scores against the injected frauds"):
            result.evaluation = evaluate_fraud(settings, fleet_dir)
        ids = [s["id"] for s in sources]
        with phase("serve, run paid queries and a passport report, settle them on the Marketplace"):
            with market.ServingApi(settings, client) as api:
                result.api_url = api.url
                result.serving_rows, result.serving_events, flagged = market.view_counts(api)
                if flagged is None:
                    raise PccStateError("the serving layer has no vehicle to query")
                result.flagged_vehicle = flagged
                result.passport_url = f"{api.url}/passport/{flagged}"
                for name, sql in market.demo_queries(flagged):
                    say(f"  paid query: {name}")
                    result.queries.append(market.paid_query(api, client, consumer_key(), ids, name, sql))
                report = market.paid_passport(api, client, consumer_key(), ids, flagged)
                result.queries.append(report)  # settled like the queries
                say(
                    f"  paid passport view: unsigned 402, then bought: {report.rows} events, receipt "
                    f"{report.receipt['receipt_no']} for {report.receipt['amount_cents']} cents, settled"
                )
                result.share_url, shown = market.shared_passport(api, flagged)
                say(f"  share-link view (the owner's, 7 days, free): {shown} events at {result.share_url}")
            end = market.balances(client, ids, "0x" + "00" * 20)
            result.paid = {s: end[s] for s in ids}
            result.treasury = end["treasury"]
            result.gas["settlement"] = sum(q.settle_gas for q in result.queries)
            total = market.chain_gas(client, first_block)
            result.gas["setup"] = total - sum(result.gas.values())
            result.gas["total"] = total
        from infra.demo_report import draw_chart

        result.chart = draw_chart(result, settings.data_dir / "demo.png")
        if options.keep_running and options.start_services:
            config_file = stack.write_config(settings)
            key_file = settings.data_dir / "consumer.key"
            key_file.write_text(consumer_key(), encoding="ascii")
            key_file.chmod(0o600)
            stack.start_api_process(settings, config_file)
            result.kept_running = True
        return result
    finally:
        if own_spark and spark is not None:
            spark.stop()
        if options.start_services and not result.kept_running:
            say("stopping the serving API, the chain node and the broker")
            # a Kafka client left open by a layer would log every reconnect once the broker is gone
            logging.getLogger("kafka").setLevel(logging.CRITICAL)
            stack.stop_stack(settings)
