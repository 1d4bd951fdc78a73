"""Deliveries: the ``alerts`` topic -> matching subscriptions -> one queue per destination -> webhook.

Each destination (scheme, host, port) has its own queue, its own HTTP client
and ``per_destination`` workers: a destination that fails, answers slowly or
never answers holds only its own workers, never another destination's.  A
failed attempt (no answer within ``timeout_s``, a status other than 2xx, a
redirect: never followed) is put back on its queue after a backoff
(:func:`retry_delay`: doubling from ``retry_base_s`` up to ``retry_max_s``,
with jitter) until ``retry_window_s`` after the alert was matched; then it is
parked as ``failed`` (``pcc alerts redeliver``).  A 410 ends the subscription.

Every attempt is signed afresh (:mod:`serving.alerts.signing`) with the same
``webhook-id``, the alert's id: receivers deduplicate on it (at least once).
In production mode the destination is resolved and checked before every
attempt (:func:`serving.alerts.destinations.check_url`), and each connection
goes to an address resolved and checked at connect time (:class:`CheckedBackend`):
what the check saw is what the connection reaches.

With billing (:mod:`serving.alerts.billing`) each attempt first holds the
alert kind's price of the subscriber's funds: one that cannot pay is parked
(``cannot pay: …``) without being sent; a 2xx answer writes the delivery's one
receipt; anything else releases the hold and costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx
import orjson

from pipelines.access import GrantStore
from pipelines.alerts import alert_refusal, kind_matches
from serving.alerts.billing import AlertBilling
from serving.alerts.config import AlertsConfig
from serving.alerts.destinations import Resolver, check_url, checked_address, origin, system_resolver
from serving.alerts.errors import DestinationRefused
from serving.alerts.grants import public_kind
from serving.alerts.signing import sign
from serving.alerts.store import AlertStore, Due, Subscription
from serving.errors import PaymentRequiredError, PriceUnavailableError, TooManyRequestsError
from serving.market.reservations import Hold

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/cloudevents+json"
MAX_ANSWER_BYTES = 64 * 1024  # of an answer's body read (to keep the connection); the rest is dropped

# httpcore asks ``import sniffio`` on every request; without sniffio installed each failed import scans
# sys.path (about 1 ms, most of a delivery's cost).  A None entry makes that import fail at once, as before.
try:
    import sniffio  # noqa: F401
except ImportError:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]
TransportFactory = Callable[[], httpx.AsyncBaseTransport | None]


def retry_delay(
    attempts: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: ``base * 2^(attempts-1)``, at most
    ``max_s``, times a random factor in [0.5, 1) so that many failing deliveries do not retry in step."""
    exp = min(max_s, base_s * 2.0 ** max(0, attempts - 1))
    return exp * (0.5 + rand() / 2)


def _tls_context() -> ssl.SSLContext:
    """Certificates verified against the Mozilla roots httpx uses by default (certifi)."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to an address just resolved and checked (SSRF, DNS rebinding).

    The host name stays the request's: TLS sends it (SNI) and verifies the
    certificate against it; only the address connected to is the checked one.
    """

    def __init__(self, resolve: Resolver, *, development: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._resolve = resolve
        self._development = development

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            address = await loop.run_in_executor(
                None,
                lambda: checked_address(host, port, development=self._development, resolve=self._resolve),
            )
        except DestinationRefused as exc:
            raise httpcore.ConnectError(exc.message) from None
        return await self._inner.connect_tcp(
            address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("deliveries go over TCP to a checked address, never to a local socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport whose connection pool connects through :class:`CheckedBackend`."""

    def __init__(self, backend: CheckedBackend, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        # httpx (pinned) builds its httpcore pool without a way to pass a network backend: build it again
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


@dataclass
class _Lane:
    """One destination's queue, client and workers."""

    queue: asyncio.Queue[Due]
    client: httpx.AsyncClient
    workers: list[asyncio.Task[None]] = field(default_factory=list)


class Dispatcher:
    """Matches alerts to subscriptions and delivers them; its event loop runs in a thread of its own."""

    def __init__(
        self,
        config: AlertsConfig,
        store: AlertStore,
        *,
        resolve: Resolver = system_resolver,
        transport: TransportFactory = lambda: None,
        clock: Callable[[], float] = time.time,
        grants: GrantStore | None = None,
        billing: AlertBilling | None = None,
    ) -> None:
        """``grants``: checked again for every alert matched, so a revoked or expired grant stops the
        deliveries of that vehicle (None: the subscription's check only, for tests and benches).
        ``billing``: each delivery held before and charged after (None: deliveries are not billed)."""
        self.config = config
        self.store = store
        self._grants = grants
        self.billing = billing
        self._resolve = resolve
        self._transport = transport
        self._clock = clock
        self._subs: dict[str, Subscription] = {}
        self._by_vehicle: dict[str, list[Subscription]] = defaultdict(list)
        self._fleet: list[Subscription] = []  # fleet-wide subscriptions (public kinds only)
        self._index_lock = threading.Lock()
        self._lanes: dict[tuple[str, str, int], _Lane] = {}
        self._tls = _tls_context()  # one for every destination: building one costs milliseconds
        self._backend = CheckedBackend(resolve, development=config.development)
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self.refused = 0  # alerts dropped: unsigned, altered or signed by an untrusted raiser
        for sub in store.subscriptions(active_only=True):
            self._index(sub)

    # ------------------------------------------------------------------ subscriptions

    def _index(self, sub: Subscription) -> None:
        with self._index_lock:
            self._subs[sub.id] = sub
            if sub.fleet_wide:
                self._fleet.append(sub)
            for vehicle in sub.vehicles:
                self._by_vehicle[vehicle].append(sub)

    def subscribe(self, sub: Subscription) -> None:
        """Start matching alerts for a subscription just stored."""
        self._index(sub)

    def _unindex(self, sub_id: str) -> None:
        with self._index_lock:
            sub = self._subs.pop(sub_id, None)
            if sub is not None:
                self._fleet = [s for s in self._fleet if s.id != sub_id]
                for vehicle in sub.vehicles:
                    self._by_vehicle[vehicle] = [s for s in self._by_vehicle[vehicle] if s.id != sub_id]

    def end(self, sub_id: str, reason: str) -> None:
        self.store.end(sub_id, reason)
        self._unindex(sub_id)

    def matching(self, alert: dict[str, Any]) -> list[Subscription]:
        data = alert["data"]
        with self._index_lock:
            candidates = list(self._by_vehicle.get(data["vehicle"], ()))
            fleet = list(self._fleet) if public_kind(data["kind"]) else []
        return [
            s
            for s in candidates
            if s.created_ms <= data["raised_ms"]
            and any(kind_matches(p, data["kind"]) for p in s.kinds)
            and self._granted(s, data["vehicle"])
        ] + [
            s
            for s in fleet
            if s.created_ms <= data["raised_ms"] and any(kind_matches(p, data["kind"]) for p in s.kinds)
        ]

    def _granted(self, sub: Subscription, vehicle: str) -> bool:
        if self._grants is None:
            return True
        now = int(self._clock())
        held = self._grants.grants(vehicle=vehicle, grantee=bytes.fromhex(sub.grant_key))
        return any(g.expiry_s == 0 or g.expiry_s > now for g in held)

    # ------------------------------------------------------------------ intake (any thread)

    def offer(self, alert: dict[str, Any], body: bytes | None = None) -> int:
        """Record the deliveries an alert owes and queue them; returns how many are new.

        An alert not signed by a trusted raiser (:func:`pipelines.alerts.alert_refusal`) is
        dropped: never sent, never paid; counted in ``refused``.
        """
        reason = alert_refusal(alert, self.config.trusted_raisers)
        if reason is not None:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("alert %s dropped (%d so far): %s", alert.get("id"), self.refused, reason)
            return 0
        subs = self.matching(alert)
        if not subs:
            return 0
        now = int(self._clock() * 1000)
        new = self.store.record(alert, body or orjson.dumps(alert), [s.id for s in subs], now)
        for sub_id in new:
            self._schedule(Due(sub_id, alert["id"], 0, now), 0.0)
        return len(new)

    def requeue(self, dues: list[Due]) -> None:
        for due in dues:
            self._schedule(due, 0.0)

    def _schedule(self, due: Due, delay_s: float) -> None:
        self._loop.call_soon_threadsafe(self._enqueue, due, delay_s)

    # ------------------------------------------------------------------ the loop

    def start(self) -> None:
        """Run the event loop in a thread; pending deliveries of an earlier run are queued again."""
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pcc-alerts-dispatch", daemon=True
        )
        self._thread.start()
        now = self._clock()
        for due, next_ms in self.store.pending():
            self._schedule(due, max(0.0, next_ms / 1000 - now))

    def stop(self) -> None:
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None

    async def _shutdown(self) -> None:
        for lane in self._lanes.values():
            for task in lane.workers:
                task.cancel()
            await asyncio.gather(*lane.workers, return_exceptions=True)
            await lane.client.aclose()
        self._lanes.clear()

    def _enqueue(self, due: Due, delay_s: float) -> None:
        if delay_s > 0:
            self._loop.call_later(delay_s, self._enqueue, due, 0.0)
            return
        sub = self._subs.get(due.subscription_id)
        if sub is None:
            return
        self._lane(origin(sub.url)).queue.put_nowait(due)

    def _lane(self, key: tuple[str, str, int]) -> _Lane:
        lane = self._lanes.get(key)
        if lane is None:
            n = self.config.per_destination
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            transport = self._transport() or _CheckedTransport(self._backend, self._tls, limits)
            client = httpx.AsyncClient(
                timeout=self.config.timeout_s,
                follow_redirects=False,
                trust_env=False,  # no proxy from the environment: deliveries go where they are checked to go
                limits=limits,
                transport=transport,
                verify=self._tls,
            )
            lane = self._lanes[key] = _Lane(asyncio.Queue(), client)
            lane.workers = [self._loop.create_task(self._work(lane)) for _ in range(n)]
        return lane

    async def _work(self, lane: _Lane) -> None:
        while True:
            due = await lane.queue.get()
            try:
                await self._attempt(lane, due)
            except Exception as exc:  # a bug must not stop the destination's queue
                self._failed(due, None, f"internal: {type(exc).__name__}")

    async def _attempt(self, lane: _Lane, due: Due) -> None:
        sub = self._subs.get(due.subscription_id)
        if sub is None:
            return
        if not self.config.development:
            try:
                await self._loop.run_in_executor(
                    None, lambda: check_url(sub.url, development=False, resolve=self._resolve)
                )
            except DestinationRefused as exc:
                self._failed(due, None, exc.message)
                return
        body = self.store.body(due.alert_id)
        hold: Hold | None = None
        if self.billing is not None:
            billing = self.billing
            kind = str(orjson.loads(body)["data"]["kind"])
            try:
                hold = await self._loop.run_in_executor(None, lambda: billing.hold(sub.account, kind))
            except (PaymentRequiredError, PriceUnavailableError) as exc:
                self._failed(due, None, f"cannot pay: {exc.message}")  # parked, not sent
                return
            except TooManyRequestsError as exc:  # the account's other work in flight: later
                self._retry(due, None, f"cannot pay yet: {exc.message}", self._clock())
                return
        try:
            await self._send(lane, due, sub, body)
        finally:
            if hold is not None:  # after the receipt: its cents count as pending instead
                hold.release()

    async def _send(self, lane: _Lane, due: Due, sub: Subscription, body: bytes) -> None:
        headers = {
            "content-type": CONTENT_TYPE,
            "user-agent": "pcc-alerts/1",
            **sign(sub.secret, due.alert_id, body),
        }
        status: int | None = None
        error: str | None = None
        try:
            async with lane.client.stream("POST", sub.url, content=body, headers=headers) as response:
                status = response.status_code
                read = 0  # read to the end (so the connection is kept), up to a bound
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read > MAX_ANSWER_BYTES:
                        break
        except httpx.TimeoutException:
            error = f"no answer within {self.config.timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        now = self._clock()
        if status is not None and 200 <= status < 300:
            if self.billing is not None:
                billing = self.billing
                alert = orjson.loads(body)
                try:
                    await self._loop.run_in_executor(None, lambda: billing.charge(sub.account, sub.id, alert))
                except Exception as exc:  # delivered all the same: say so, never send it again for this
                    log.error("alert %s delivered to %s but not charged: %s", due.alert_id, sub.id, exc)
            self.store.attempted(
                due, status="delivered", http_status=status, error=None, now_ms=int(now * 1000), next_ms=0
            )
        elif status == 410:  # the attempt stays in the log with its answer, then the subscription ends
            reason = "the destination answered 410 Gone"
            self.store.attempted(
                due, status="gone", http_status=status, error=reason, now_ms=int(now * 1000), next_ms=0
            )
            self.end(sub.id, reason)
        else:
            self._retry(due, status, error or f"HTTP {status}", now)

    def _retry(self, due: Due, status: int | None, error: str, now: float) -> None:
        delay = retry_delay(due.attempts + 1, self.config.retry_base_s, self.config.retry_max_s)
        if now + delay - due.created_ms / 1000 > self.config.retry_window_s:
            self._failed(due, status, error)
            return
        self.store.attempted(
            due,
            status="pending",
            http_status=status,
            error=error,
            now_ms=int(now * 1000),
            next_ms=int((now + delay) * 1000),
        )
        self._enqueue(Due(due.subscription_id, due.alert_id, due.attempts + 1, due.created_ms), delay)

    def _failed(self, due: Due, status: int | None, error: str) -> None:
        now_ms = int(self._clock() * 1000)
        self.store.attempted(due, status="failed", http_status=status, error=error, now_ms=now_ms, next_ms=0)
