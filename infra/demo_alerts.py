"""The demo's insurer: subscribed to ``fraud.*`` and ``wreck.declared`` for the whole fleet, it receives
the speed layer's alerts on a real HTTP endpoint, verifies each signature, and the demo prints what it got
(count per kind, latency from the flag raised to the webhook received) beside the frauds injected.

Two calls from :mod:`infra.demo`: :func:`start` once the ledger is deployed (before the stream) and
:func:`finish` after it.  The owners' grants to the insurer are simulated in a grant store of its own
(the demo makes no owner grants on chain).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from pipelines.settings import Settings

INSURER_KEY = "0x" + "1d" * 32  # the simulated insurer's account (play key)
KINDS = ("fraud.*", "wreck.declared")
Say = Callable[[str], None]


@dataclass
class InsurerAlerts:
    """What the insurer's endpoint received; the services behind it, stopped by :func:`finish`."""

    received: dict[str, tuple[str, float]] = field(default_factory=dict)  # webhook-id -> (kind, latency ms)
    rejected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    secret: str = ""
    stop: list[Callable[[], None]] = field(default_factory=list)
    service: Any = None


def _endpoint(insurer: InsurerAlerts) -> ThreadingHTTPServer:
    from serving.alerts.signing import WebhookVerificationError, verify

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            now = time.time() * 1000
            try:
                msg_id = verify(insurer.secret, dict(self.headers.items()), body)
            except WebhookVerificationError:
                with insurer.lock:
                    insurer.rejected += 1
                self.send_response(400)
                self.end_headers()
                return
            data = orjson.loads(body)["data"]
            with insurer.lock:
                insurer.received.setdefault(msg_id, (data["kind"], now - data["raised_ms"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def _fleet_vehicles(settings: Settings, fleet_dir: Path) -> list[str]:
    """The pseudonyms of the fleet's cars, as the vault gives them to the producers."""
    from pipelines.vault import IdentityVault

    vins: set[str] = set()
    for events in sorted((fleet_dir / "events").glob("*.jsonl")):
        with events.open("rb") as fh:
            for line in fh:
                vins.add(orjson.loads(line)["vin"])
    vault = IdentityVault(settings)
    try:
        return sorted(vault.pseudonymize_vehicle(vin) for vin in vins)
    finally:
        vault.close()


def start(settings: Settings, fleet_dir: Path, say: Say) -> InsurerAlerts:
    """Run the alert service and the insurer's endpoint; subscribe the insurer to its fleet."""
    import uvicorn

    from infra.procs import free_ports
    from ledger.client import LedgerClient
    from pipelines.access import Grant, SqliteGrantStore
    from pipelines.access.wrap import ConsumerKeyPair
    from serving.alerts.client import AlertsClient
    from serving.alerts.config import AlertsConfig
    from serving.alerts.service import build_service
    from serving.ingest.wiring import ledger_domain

    insurer = InsurerAlerts()
    vehicles = _fleet_vehicles(settings, fleet_dir)
    keys = ConsumerKeyPair.generate()
    grants = SqliteGrantStore(settings.data_dir / "alerts" / "insurer-grants.sqlite")
    for v in vehicles:
        grants.put(Grant(keys.public_key, v, "owner_identity", 0, 0, "owner:o-" + "0" * 32, b"demo"))
    (port,) = free_ports(1)
    config = AlertsConfig.from_settings(settings).model_copy(
        update={"port": port, "mode": "development", "development": True}
    )
    service = build_service(
        config, ledger_domain(LedgerClient.from_settings(settings), config.request_host), grants
    )
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=port, log_level="warning"))
    api = threading.Thread(target=server.run, name="pcc-demo-alerts", daemon=True)
    api.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the alert service did not start")
        time.sleep(0.05)
    endpoint = _endpoint(insurer)
    threading.Thread(target=endpoint.serve_forever, name="pcc-demo-insurer", daemon=True).start()
    url = f"http://127.0.0.1:{endpoint.server_address[1]}/claims/pcc-alerts"
    with AlertsClient(f"http://127.0.0.1:{port}", INSURER_KEY) as client:
        insurer.secret = client.subscribe(url, KINDS, vehicles, keys)["secret"]
    say(f"  a simulated insurer subscribed its {len(vehicles):,} cars to {' and '.join(KINDS)} at {url}")

    def stop() -> None:
        server.should_exit = True
        api.join(timeout=30)
        endpoint.shutdown()
        endpoint.server_close()
        grants.close()

    insurer.stop.append(stop)
    insurer.service = service
    return insurer


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def finish(insurer: InsurerAlerts, labels: dict[str, int], say: Say, wait_s: float = 30.0) -> dict[str, Any]:
    """Wait for the deliveries still pending, stop, and print the alerts received beside the frauds injected."""
    deadline = time.monotonic() + wait_s
    while insurer.service.store.pending() and time.monotonic() < deadline:
        time.sleep(0.2)
    for stop in insurer.stop:
        stop()
    with insurer.lock:
        got = list(insurer.received.values())
        rejected = insurer.rejected
    by_kind: dict[str, list[float]] = defaultdict(list)
    for kind, latency in got:
        by_kind[kind].append(latency)
    latencies = [lat for _, lat in got]
    counts = Counter({k: len(v) for k, v in by_kind.items()})
    say("[bold]alerts received by the insurer's webhook[/] (signatures verified, deduplicated on webhook-id)")
    for kind in sorted(by_kind):
        say(
            f"  {kind:<28} {counts[kind]:>6,}   flag → webhook p50 {_pct(by_kind[kind], 0.5):,.0f} ms, "
            f"p99 {_pct(by_kind[kind], 0.99):,.0f} ms"
        )
    say(
        f"  {'all':<28} {len(got):>6,}   p50 {_pct(latencies, 0.5):,.0f} ms, p99 {_pct(latencies, 0.99):,.0f} ms"
        + (f"; {rejected} with a bad signature" if rejected else "")
    )
    injected = ", ".join(f"{k} {v:,}" for k, v in sorted(labels.items()) if k != "noise")
    say(f"  frauds injected by the simulator: {injected or 'none'}")
    return {"received": dict(counts), "p50_ms": _pct(latencies, 0.5), "p99_ms": _pct(latencies, 0.99)}
