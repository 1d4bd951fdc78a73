"""Alert webhooks: latency from a flag raised in the speed layer to the webhook received, and the
isolation of healthy destinations from failing ones.

* ``alerts_latency``: ``--rate`` events/s (2,000 at scale 1) with 1 % odometer rollbacks through
  the real broker, the speed layer (Beam, in process) and the alert service (in process); a real HTTP
  endpoint in another process receives every alert.  Figures: p50/p99 from the flag raised
  (``data.raised_ms``) to the webhook received, and from the event produced; ratio: p99 / the 2 s target.
* ``alerts_isolation``: 1,000 subscriptions, each its own destination (a port of a real HTTP server
  in another process); alerts offered at a steady rate; the same run with no failing destination
  (the reference) and with 10 % of them never answering (timeout 5 s, retried).  Ratio: healthy p99
  with failures / healthy p99 without (target ≤ 1.2).

``python -m bench.bench_alerts [--scale F]``; at scale 1 about two minutes on 2 shared cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import record
from bench.stack import bench_settings, running_broker

DAY = 86_400_000
VEHICLE = "v-{:032x}"


# ---------------------------------------------------------------------------- the receiving endpoints


async def _serve(ports: int, failing: int) -> None:
    """``ports`` HTTP endpoints on loopback; the first ``failing`` never answer.  Prints the ports, then
    on a ``dump`` line from stdin prints every delivery received (port, webhook-id, received ms, raised ms)."""
    records: list[tuple[int, str, float, int]] = []

    def handler(port: int, hang: bool) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    now = time.time() * 1000
                    headers = dict(
                        line.split(": ", 1)
                        for line in head.decode("latin-1").split("\r\n")[1:]
                        if ": " in line
                    )
                    lowered = {k.lower(): v for k, v in headers.items()}
                    body = await reader.readexactly(int(lowered.get("content-length", "0")))
                    if hang:
                        await asyncio.sleep(3600)
                    raised = json.loads(body)["data"]["raised_ms"]
                    records.append((port, lowered["webhook-id"], now, raised))
                    writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                pass
            finally:
                writer.close()

        return handle

    servers, bound = [], []
    for i in range(ports):
        server = await asyncio.start_server(handler(0, False), "127.0.0.1", 0, backlog=64)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        server = await asyncio.start_server(handler(port, i < failing), "127.0.0.1", port, backlog=64)
        servers.append(server)
        bound.append(port)
    print(json.dumps(bound), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    print(json.dumps(records), flush=True)
    os._exit(0)  # the endpoints that never answer are not waited for


class Endpoints:
    """The receiving endpoints, in a process of their own (they do not share the dispatcher's GIL)."""

    def __init__(self, ports: int, failing: int = 0) -> None:
        code = f"import asyncio, bench.bench_alerts as b; asyncio.run(b._serve({ports}, {failing}))"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.ports: list[int] = json.loads(self.proc.stdout.readline())

    def received(self) -> list[tuple[int, str, float, int]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("dump\n")
        self.proc.stdin.flush()
        out = [tuple(r) for r in json.loads(self.proc.stdout.readline())]
        self.proc.wait(timeout=30)
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _delivered(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM deliveries WHERE status = 'delivered'").fetchone()[0])


def _wait(predicate: Any, what: str, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(what)
        time.sleep(0.05)


# ---------------------------------------------------------------------------- isolation


def _dispatch_run(work: Path, subscriptions: int, failing: int, alerts: int, rate: float) -> list[float]:
    """Offer ``alerts`` alerts (one per subscription in turn) at ``rate``/s; healthy latencies (ms)."""
    from pipelines.alerts import AlertData, AlertSigner, cloud_event
    from serving.alerts.config import AlertsConfig
    from serving.alerts.dispatcher import Dispatcher
    from serving.alerts.signing import new_secret
    from serving.alerts.store import AlertStore, Subscription

    endpoints = Endpoints(subscriptions, failing)
    raiser = AlertSigner.from_file(work / "raiser.key")
    config = AlertsConfig(
        data_dir=work, development=True, timeout_s=5.0, retry_base_s=1.0, retry_max_s=10.0,
        trusted_raisers=(raiser.public_hex,),
    )  # fmt: skip
    store = AlertStore(work / "alerts.sqlite")
    dispatcher = Dispatcher(config, store)
    try:
        for i, port in enumerate(endpoints.ports):
            sub = Subscription(
                f"sub_{i}", "0x" + "11" * 20, f"http://127.0.0.1:{port}/hook", new_secret(), ("fraud.*",),
                (VEHICLE.format(i),), "aa" * 32, 0,
            )  # fmt: skip
            store.add(sub)
            dispatcher.subscribe(sub)
        dispatcher.start()
        offered: dict[str, float] = {}
        healthy_expected = 0

        def offer(target: int) -> dict[str, Any]:
            now_ms = int(time.time() * 1000)
            alert = cloud_event(
                AlertData(kind="fraud.rollback", vehicle=VEHICLE.format(target), event_id=str(uuid.uuid4()),
                          event_type="odometer_reading", source_id="cc-aurora", event_time=now_ms, raised_ms=now_ms)
            )  # fmt: skip
            dispatcher.offer(raiser.sign(alert))
            return alert

        for target in range(failing, subscriptions):  # warm up: every healthy destination connected once
            offer(target)
        _wait(lambda: _delivered(work / "alerts.sqlite") >= subscriptions - failing, "warm-up did not finish")
        healthy_expected = subscriptions - failing
        start = time.monotonic()
        for n in range(alerts):
            target = n % subscriptions
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            offered[offer(target)["id"]] = time.time() * 1000
            healthy_expected += target >= failing
        _wait(
            lambda: _delivered(work / "alerts.sqlite") >= healthy_expected,
            "healthy deliveries did not finish",
        )
        failing_ports = set(endpoints.ports[:failing])
        return [
            received - offered[msg_id]
            for port, msg_id, received, _ in endpoints.received()
            if port not in failing_ports and msg_id in offered
        ]
    finally:
        endpoints.close()
        dispatcher.stop()
        store.close()


def isolation(work: Path, scale: float) -> None:
    subscriptions = 1000
    alerts = max(1000, int(2000 * scale))
    rate = 30.0  # well under what the dispatcher sustains on 2 busy shared cores
    clean = _dispatch_run(work / "clean", subscriptions, 0, alerts, rate)
    broken = _dispatch_run(work / "broken", subscriptions, subscriptions // 10, alerts, rate)
    p99_clean, p99_broken = _pct(clean, 0.99), _pct(broken, 0.99)
    record(
        "alerts_isolation",
        {
            "subscriptions": subscriptions,
            "failing": subscriptions // 10,
            "alerts": alerts,
            "rate_per_s": rate,
            "healthy_p50_ms": round(_pct(broken, 0.5), 1),
            "healthy_p99_ms": round(p99_broken, 1),
            "ratio_is": "healthy p99 with 10% failing / p99 with none (target <= 1.2)",
        },
        {"healthy_p50_ms": round(_pct(clean, 0.5), 1), "healthy_p99_ms": round(p99_clean, 1)},
        p99_broken / p99_clean,
    )


# ---------------------------------------------------------------------------- latency through the speed layer


def latency(work: Path, bootstrap: str, scale: float, rate: float) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from pipelines.access import Grant, InMemoryGrantStore
    from pipelines.alerts import AlertSigner, raiser_key_path
    from serving.alerts.config import AlertsConfig
    from serving.alerts.dispatcher import Dispatcher
    from serving.alerts.feed import AlertFeed
    from serving.alerts.signing import new_secret
    from serving.alerts.store import AlertStore, Subscription
    from speed.config import SpeedConfig
    from speed.pipeline import SpeedRun
    from speed.roots import InMemoryRoots
    from tests.fixtures.synthetic import SyntheticSource, wire

    del Grant, InMemoryGrantStore
    prefix = "bal" + uuid.uuid4().hex[:6] + "."
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics(
        [NewTopic(prefix + t, 2, 1) for t in ("telemetry", "garage", "insurer", "deadletter")]
    )
    admin.close()
    n = max(4000, int(30_000 * scale))
    vehicles = 2000
    roots = InMemoryRoots()
    src = SyntheticSource("cc-aurora", roots, checkpoint_every=200)
    start = int(time.time() * 1000) - 40 * DAY
    messages = []
    frauds = 0
    for i in range(n):
        car = i % vehicles
        km = 50_000 + (i // vehicles) * 60
        if i >= vehicles and (i // vehicles + car) % 100 == 7:  # 1 %: a rollback, other cars each round
            km, frauds = km - 20_000, frauds + 1
        env = src.append(src.odometer(VEHICLE.format(car), km, start + i * 60_000))
        messages.append(env)
    src.checkpoint()
    raw = [(e["vehicle"].encode(), wire(e)) for e in messages]

    endpoints = Endpoints(1)
    config = AlertsConfig(
        data_dir=work / "svc", bootstrap=bootstrap, topic=prefix + "alerts", development=True,
        trusted_raisers=(AlertSigner.from_file(raiser_key_path(work / "speed")).public_hex,),
    )  # fmt: skip
    store = AlertStore(config.state_dir / "alerts.sqlite")
    dispatcher = Dispatcher(config, store)
    sub = Subscription(
        "sub_fleet", "0x" + "11" * 20, f"http://127.0.0.1:{endpoints.ports[0]}/hook", new_secret(),
        ("fraud.*", "wreck.declared"), tuple(VEHICLE.format(c) for c in range(vehicles)), "aa" * 32, 0,
    )  # fmt: skip
    store.add(sub)
    dispatcher.subscribe(sub)
    feed = AlertFeed(config, dispatcher)
    speed = SpeedConfig(
        bootstrap=bootstrap, data_dir=work / "speed", topics=(prefix + "telemetry",),
        deadletter_topic=prefix + "deadletter", metrics_port=None, until_idle_s=4.0, proof_wait_s=2.0,
    )  # fmt: skip
    run = SpeedRun(speed, lambda: roots)
    runner = threading.Thread(target=run.run)
    try:
        dispatcher.start()
        feed.start()
        runner.start()
        time.sleep(3.0)  # the pipeline starts before the clock runs
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1, enable_idempotence=False)
        produced: dict[str, float] = {}
        t0 = time.monotonic()
        for i, (key, value) in enumerate(raw):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            produced[messages[i]["event_id"]] = time.time() * 1000
            producer.send(prefix + "telemetry", key=key, value=value)
        producer.flush()
        achieved = n / (time.monotonic() - t0)
        producer.close()
        runner.join()
        assert run.runtime is not None and run.runtime.alerts is not None
        raised = run.runtime.alerts.published  # what the speed layer raised (a car rolled back twice to
        _wait(  # the same reading is flagged once)
            lambda: _delivered(config.state_dir / "alerts.sqlite") >= raised,
            f"fewer alerts delivered than the {raised} the speed layer raised (the service read {feed.read})",
            120,
        )
        received = endpoints.received()
    finally:
        endpoints.close()
        feed.stop()
        dispatcher.stop()
        store.close()
    by_id = {r[1]: r for r in received}
    from pipelines.alerts import alert_id

    flag_to_hook = [r[2] - r[3] for r in received]
    produce_to_hook = []
    for e in messages:
        r = by_id.get(alert_id(e["event_id"], "fraud.rollback"))
        if r is not None:
            produce_to_hook.append(r[2] - produced[e["event_id"]])
    p99 = _pct(flag_to_hook, 0.99)
    record(
        "alerts_latency",
        {
            "events": n,
            "rate_per_s": round(achieved),
            "rollbacks_injected": frauds,
            "alerts_raised": raised,
            "alerts_received": len(received),
            "flag_to_webhook_p50_ms": round(_pct(flag_to_hook, 0.5), 1),
            "flag_to_webhook_p99_ms": round(p99, 1),
            "produced_to_webhook_p50_ms": round(_pct(produce_to_hook, 0.5), 1),
            "produced_to_webhook_p99_ms": round(_pct(produce_to_hook, 0.99), 1),
            "ratio_is": "flag -> webhook p99 / the 2,000 ms target",
        },
        {"target_p99_ms": 2000},
        p99 / 2000,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_alerts", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s into the speed layer")
    parser.add_argument(
        "--figures", nargs="*", default=["isolation", "latency"], choices=["isolation", "latency"]
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    try:
        if "isolation" in args.figures:
            isolation(work / "isolation", args.scale)
        if "latency" in args.figures:
            with running_broker(bench_settings(work / "stack")) as bootstrap:
                latency(work / "latency", bootstrap, args.scale, args.rate)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
