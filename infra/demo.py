"""The platform's main job end to end, as library calls into each layer.

``run_demo(settings, options)`` simulates a fleet while the broker and the chain
node start and the contracts are deployed, registers its producers on the
ledger, streams the fleet through the producer SDK into Kafka (in a child
process, anchoring as it goes) while the speed layer verifies it (in this
process, :mod:`infra.demo_stream`), injects tampered events and a replay
straight onto Kafka, starts Spark while the speed layer catches up, runs the
batch job, serves the merged views, funds a consumer, runs paid queries,
settles each on the Marketplace and evaluates the fraud scores against the
simulator's labels. Every phase is timed; :mod:`infra.demo_report` prints and
draws the result.

With ``options.start_services`` the demo starts its own broker and chain node
(:mod:`infra.demo_stack`); without, ``settings`` must point at running ones
(the end-to-end test passes the session's broker and anvil node).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from infra.demo_progress import Background
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
    stages: dict[str, tuple[int, float]] = field(default_factory=dict)  # stream stage -> (events, seconds)
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
def setup_ledger(settings: Settings, sources: list[dict[str, Any]], *, deploy: bool = True) -> Any:
    """Deploy (unless ``deploy`` is False: already done), register each producer, hand every admin
    role over to governance, vote prices (propose, vote, queue in the timelock, execute), fund the
    consumer; returns the ledger client."""
    from ledger.client import LedgerClient
    from ledger.config import DEV_KEYS
    from ledger.keys import address_of, category_key
    from ledger.onboarding import DEV_MEMBERS, deploy_consortium, register_source
    from serving.market.chain import CATEGORIES

    if deploy:
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


# -- the batch layer ------------------------------------------------------------------------------------
def _compile_rules() -> subprocess.Popen[str]:
    """Compile the rules' kernels in a process of their own (``python -m batch.views.annotate``) at
    the lowest priority: a thread would hold the demo's interpreter lock for the 15-30 s of a cold
    compile, and at a normal priority it would take a core from the stream."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "batch.views.annotate"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    with contextlib.suppress(OSError):  # (a priority is a courtesy: the compile runs either way)
        os.setpriority(os.PRIO_PROCESS, proc.pid, 19)
    return proc


def _rules_compiled(proc: subprocess.Popen[str], say: Say) -> None:
    out, _ = proc.communicate(timeout=600)
    lines = out.strip().splitlines()
    if proc.returncode == 0 and lines:
        say(f"  {lines[-1]} at low priority alongside (the batch pass loads them from the cache)")
    else:  # not fatal: the pass's workers compile them themselves
        say(f"  the rules' kernels did not compile ahead (exit {proc.returncode}): {' '.join(lines[-3:])}")


def run_batch_layer(settings: Settings, result: DemoResult, client: Any, spark: Any, say: Say) -> None:
    import pyarrow.parquet as pq

    from batch.config import BatchConfig
    from batch.jobs import run_batch
    from batch.publish import read_current

    config = BatchConfig.from_settings(settings)
    record = run_batch(
        config, full=True, spark=spark, progress=lambda stage, i, n: say(f"  batch {i + 1}/{n}: {stage}")
    )
    result.batch_rows = dict(record.rows_out)
    result.batch_version = record.version
    current = read_current(config)
    assert current is not None
    reputation = pq.read_table(current.view_dirs(config.batch_dir)["source_reputation"]).to_pylist()
    scores = {r["source_id"]: round(10_000 * float(r["reputation"])) for r in reputation}
    tx = client.sources.publish_reputations(scores)
    result.gas["reputations"] = int(tx["gasUsed"])


def _start_kafka(settings: Settings, options: DemoOptions, say: Say) -> None:
    from infra import demo_stack as stack
    from infra.kafka import ensure_topics

    if options.start_services:
        stack.start_broker(settings, say)
    else:
        ensure_topics(settings)


def _start_ledger(settings: Settings, options: DemoOptions) -> tuple[int, float]:
    """Start the chain node (with ``start_services``) and deploy the contracts; returns the first block
    of the demo (its gas is counted from there) and the seconds the node took to answer."""
    from infra import demo_stack as stack
    from ledger.chain import connect_url
    from ledger.onboarding import deploy_consortium

    t0 = time.perf_counter()
    if options.start_services:
        stack.start_chain(settings)
    node_s = time.perf_counter() - t0
    first_block = int(connect_url(settings.ledger.rpc_url).eth.block_number) + 1
    deploy_consortium(settings)
    return first_block, node_s


def _get_spark(master: str, driver_memory: str, shuffle_partitions: int) -> Any:
    from batch.session import get_spark

    return get_spark(master, driver_memory, shuffle_partitions)


def run_demo(  # noqa: PLR0915 (the demo's steps in order)
    settings: Settings, options: DemoOptions = DemoOptions(), *, spark: Any = None, console: Any = None
) -> DemoResult:
    """The main job end to end on ``settings`` (see the module docstring); returns what happened."""
    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from infra import demo_market as market
    from infra import demo_stack as stack
    from infra.demo_readback import evaluate_fraud, master_stats, read_dead_letters
    from infra.demo_stream import stream
    from pipelines.simulator import SimulationConfig, write_fleet

    console = console or Console(stderr=True)
    say: Say = console.print
    fleet_dir = settings.data_dir / "fleet"
    result = DemoResult(settings=settings, fleet_dir=fleet_dir)
    phase = _Phases(result, say)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    own_spark = spark is None
    live = bool(console.is_terminal)  # rich bars on a terminal; a plain line every 10 s otherwise

    def plain_say(line: str) -> None:  # one unwrapped line per progress report in a log file
        console.print(line, soft_wrap=True, highlight=False, markup=False)

    started: list[Background[Any]] = []
    warm: list[Background[Any]] = []
    compiling: list[subprocess.Popen[str]] = []
    try:
        with phase("start the broker and the chain node, simulate the fleet, deploy the contracts"):
            # side by side, as they would be: the broker's JVM and the chain node start while the
            # fleet is simulated; the contracts are deployed as soon as the node answers
            # the rules' kernels compile into numba's cache at the lowest priority, on what the
            # machine leaves idle until the batch layer needs them
            compiling.append(_compile_rules())
            broker = Background(lambda: _start_kafka(settings, options, say), "pcc-demo-broker")
            chain = Background(lambda: _start_ledger(settings, options), "pcc-demo-chain")
            started += [broker, chain]
            sim = SimulationConfig(
                vehicles=options.vehicles, days=options.days, seed=options.seed,
                start=simulation_start(options.days), fraud_rate=options.fraud_rate,
            )  # fmt: skip
            t0 = time.perf_counter()
            with Progress(*columns, console=console, disable=not live) as progress:
                task = progress.add_task("vehicles", total=options.vehicles)
                summary = write_fleet(sim, fleet_dir, on_vehicle=lambda _n: progress.advance(task))
            say(f"  fleet simulated: {summary.events:,} events in {time.perf_counter() - t0:.1f} s")
            result.simulated, result.labels = summary.events, dict(summary.labels)
            sources = json.loads((fleet_dir / "fleet.json").read_text())["sources"]
            first_block, node_s = chain.result()
            say(f"  chain node up in {node_s:.1f} s, contracts deployed {chain.seconds - node_s:.1f} s later")
            broker.result()
            say(f"  Kafka broker up, topics created in {broker.seconds:.1f} s")
        with phase("register the producers, hand over to governance, vote prices, fund a consumer"):
            client = setup_ledger(settings, sources, deploy=False)
        jobs = [
            (str(fleet_dir / "events" / f"{s['id']}.jsonl"), s["id"], s["kind"])
            for s in sources
            if (fleet_dir / "events" / f"{s['id']}.jsonl").exists()
        ]
        from infra import demo_alerts

        insurer = demo_alerts.start(settings, fleet_dir, say)  # an insurer's webhook gets the flags

        def start_spark() -> None:  # the speed layer catches up on one core: Spark starts on the other
            if spark is None:
                b = settings.batch
                warm.append(
                    Background(
                        lambda: _get_spark(b.master, b.driver_memory, b.shuffle_partitions), "pcc-demo-spark"
                    )
                )

        with phase("stream: producers → Kafka → speed layer (until caught up)"):
            with Progress(*columns, console=console, disable=not live) as progress:
                meter = stream(
                    settings, result, options, jobs, progress,
                    say=None if live else plain_say, on_producers_done=start_spark,
                )  # fmt: skip
            result.stages = {
                stage: (meter.counts.get(stage, 0), meter.elapsed(stage))
                for stage in ("producers", "speed layer")
            }
            plain_say("  " + meter.line())
            result.dead_letters = read_dead_letters(settings)
            result.master_rows, result.verified_share = master_stats(settings)
        demo_alerts.finish(insurer, result.labels, say)
        with phase("batch layer: rebuild, audit, publish; reputations on chain"):
            for proc in compiling:  # the pass's workers then load the compiled rules from the cache
                _rules_compiled(proc, say)
            if spark is None:
                spark = (
                    warm[0].result()
                    if warm
                    else _get_spark(
                        settings.batch.master, settings.batch.driver_memory, settings.batch.shuffle_partitions
                    )
                )
            run_batch_layer(settings, result, client, spark, say)
        ids = [s["id"] for s in sources]
        # the published scores against the simulator's labels, read while the serving API answers
        evaluation = Background(lambda: evaluate_fraud(settings, fleet_dir), "pcc-demo-evaluate")
        started.append(evaluation)
        with phase(
            "serve, run paid queries and a passport report, settle them on the Marketplace; "
            "evaluate the fraud scores alongside"
        ):
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
            result.evaluation = evaluation.result()
            say(
                f"  fraud scores evaluated against the injected frauds in {evaluation.seconds:.1f} s (alongside)"
            )
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
        for background in started:  # a step still running after an error: wait before stopping the stack
            with contextlib.suppress(BaseException):
                background.result(timeout=180)
        for proc in compiling:  # failed before the batch: the compile is no longer wanted
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if warm and spark is None:  # failed before the batch: the Spark session started for it
            with contextlib.suppress(BaseException):
                spark = warm[0].result(timeout=180)
        if own_spark and spark is not None:
            spark.stop()
        if options.start_services and not result.kept_running:
            say("stopping the serving API, the chain node and the broker")
            # a Kafka client left open by a layer would log every reconnect once the broker is gone
            logging.getLogger("kafka").setLevel(logging.CRITICAL)
            stack.stop_stack(settings)
