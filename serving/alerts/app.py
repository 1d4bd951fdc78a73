"""The alert service over HTTP: ``pcc alerts serve`` (OpenAPI at ``/docs``).

Every ``/v1/subscriptions`` request is signed like a query (EIP-712, the
deployment's domain at ``GET /v1/domain``, :mod:`serving.auth`).  In this order:

1. a body over ``alerts.max_body_bytes`` (64 KiB): 413, before anything is read further or parsed;
2. the signature and its nonce: 401 (unsigned, forged, stale, replayed, another deployment's);
3. the body: 400 naming the field (unknown kind, a vehicle that is not a pseudonym, by position);
4. the grant key's proof of possession and a current grant on every vehicle: 403, naming the
   vehicle's position in the list (never the vehicle); without a vehicle list (fleet-wide),
   a kind that reveals protected information: 403 (:mod:`serving.alerts.grants`);
5. with billing, a kind governance has set no price for: 400 naming its price key
   (:mod:`serving.alerts.billing`);
6. the destination URL (:mod:`serving.alerts.destinations`): 400.

A subscription belongs to the account that signed it: another account's is 404.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from pipelines.access import GrantStore
from pipelines.alerts import ALERT_KINDS, valid_pattern
from pipelines.events import VEHICLE_PSEUDONYM
from serving.alerts.billing import AlertBilling
from serving.alerts.config import AlertsConfig
from serving.alerts.destinations import Resolver, check_url, system_resolver
from serving.alerts.dispatcher import Dispatcher
from serving.alerts.errors import FleetWideRefused, KindNotForSale
from serving.alerts.grants import ServiceKey, check_granted, protected_kinds
from serving.alerts.signing import new_secret, secret_key
from serving.alerts.store import AlertStore, Subscription
from serving.auth import Authenticator
from serving.bodylimit import BodyLimitedApp
from serving.errors import MalformedRequestError, ServingError, http_status
from serving.market.pricing import alert_category
from serving.paid import parse_body

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_VEHICLES = 10_000


class SubscribeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="Where alerts are POSTed: https:// on a public address.")
    kinds: list[str] = Field(
        min_length=1,
        max_length=32,
        description=f"Alert kinds, or a family such as fraud.*: {', '.join(ALERT_KINDS)}.",
    )
    vehicles: list[str] | None = Field(
        None,
        min_length=1,
        max_length=MAX_VEHICLES,
        description="Vehicle pseudonyms v-… you hold a grant on; omitted: every vehicle (fleet-wide), "
        "for kinds that reveal only public information (fraud.*, wreck.declared).",
    )
    grant_key: str | None = Field(
        None, description="The consumer X25519 public key your grants name (64 hex); with vehicles."
    )
    grant_proof: str | None = Field(
        None,
        description="HMAC-SHA256 keyed with the X25519 shared secret of your grant key and GET /v1/alerts/key, "
        "over 'pcc-alerts/v1|' + your account address in lower case (64 hex).",
    )
    secret: str | None = Field(
        None,
        description="Your own whsec_ secret (base64, ≥ 24 bytes); by default one is made and answered once.",
    )


class RedeliverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alert_ids: list[str] | None = Field(
        None,
        max_length=1000,
        description="These alerts again (any status); by default every parked (failed) one.",
    )


class AlertsApp(BodyLimitedApp):
    """The alerts app: bodies over ``max_body_bytes`` refused (413) before the rest is read."""

    max_body_bytes = 512 * 1024

    def refusal(self, exc: ServingError) -> Response:
        return _error(exc)


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(exc: ServingError) -> Response:
    return _json(http_status(exc), exc.detail())


def _checked(req: SubscribeRequest) -> None:
    for kind in req.kinds:
        if not valid_pattern(kind):
            raise MalformedRequestError(
                f"kinds: unknown alert kind {kind!r}; expected one of {', '.join(ALERT_KINDS)}"
            )
    if req.vehicles is None:
        if protected := protected_kinds(req.kinds):
            raise FleetWideRefused(
                f"kinds: {', '.join(protected)} reveal protected information: subscribe to them for a list "
                "of vehicles you hold a grant on, not fleet-wide"
            )
        return
    if req.grant_key is None or req.grant_proof is None:
        raise MalformedRequestError("grant_key, grant_proof: required with a vehicle list")
    for position, vehicle in enumerate(req.vehicles, start=1):
        if not VEHICLE_PSEUDONYM.match(vehicle):
            raise MalformedRequestError(
                f"vehicles: vehicle {position} of the list is not a pseudonym v-<32 hex>"
            )
    if req.secret is not None:
        secret_key(req.secret)


def _for_sale(billing: AlertBilling | None, kinds: list[str]) -> None:
    if billing is not None and (unpriced := billing.unpriced(kinds)):
        keys = ", ".join(f"'{alert_category(k)}'" for k in unpriced)
        raise KindNotForSale(
            f"kinds: {', '.join(unpriced)} not for sale: governance has set no price for {keys}"
        )


def create_alerts_app(
    config: AlertsConfig,
    store: AlertStore,
    dispatcher: Dispatcher,
    auth: Authenticator,
    service_key: ServiceKey,
    grants: GrantStore,
    *,
    resolve: Resolver = system_resolver,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
    billing: AlertBilling | None = None,
) -> FastAPI:
    """The subscriptions API; ``on_start``/``on_stop`` run the dispatcher and its feed with the server."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if on_start is not None:
            await run_in_threadpool(on_start)
        try:
            yield
        finally:
            if on_stop is not None:
                await run_in_threadpool(on_stop)

    app = AlertsApp(
        title="PCC alerts",
        version="1",
        description="Subscribe to fraud, wreck and sale alerts on vehicles you hold a grant on; they are POSTed "
        "to your HTTPS endpoint as CloudEvents, signed per Standard Webhooks, retried with backoff for 24 h.",
        lifespan=lifespan,
    )
    app.max_body_bytes = config.max_body_bytes

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> Response:
        return _error(exc)

    async def signed(request: Request) -> tuple[bytes, str]:
        body, consumer = await auth.verify_request(request)
        return body, consumer.account

    @app.get("/v1/domain", summary="The EIP-712 domain, host and types requests are signed with")
    async def domain() -> dict[str, Any]:
        return auth.document()

    @app.get("/v1/alerts/key", summary="The service's X25519 key (for grant_proof) and the alert kinds")
    async def service() -> dict[str, Any]:
        return {"key": service_key.public_hex, "kinds": list(ALERT_KINDS)}

    @app.post("/v1/subscriptions", status_code=201, summary="Subscribe an HTTPS endpoint to alert kinds")
    async def subscribe(request: Request) -> Response:
        body, account = await signed(request)
        req = parse_body(SubscribeRequest, body)
        _checked(req)
        grantee = b""
        if req.vehicles is not None:
            assert req.grant_key is not None and req.grant_proof is not None
            grantee = service_key.check_proof(req.grant_key, req.grant_proof, account)
            await run_in_threadpool(check_granted, grants, grantee, req.vehicles)
        await run_in_threadpool(_for_sale, billing, req.kinds)
        await run_in_threadpool(lambda: check_url(req.url, development=config.development, resolve=resolve))
        secret = req.secret or new_secret()
        sub = Subscription(
            id="sub_" + secrets.token_hex(12),
            account=account,
            url=req.url,
            secret=secret,
            kinds=tuple(dict.fromkeys(req.kinds)),
            vehicles=tuple(dict.fromkeys(req.vehicles or ())),
            grant_key=grantee.hex(),
            created_ms=int(time.time() * 1000),
        )
        await run_in_threadpool(store.add, sub)
        dispatcher.subscribe(sub)
        return _json(201, {**sub.public(), "secret": secret})

    @app.get("/v1/subscriptions", summary="Your subscriptions")
    async def list_subscriptions(request: Request) -> Response:
        _, account = await signed(request)
        subs = await run_in_threadpool(store.subscriptions, account)
        return _json(200, {"subscriptions": [s.public() for s in subs]})

    @app.get("/v1/subscriptions/{sub_id}/deliveries", summary="The delivery log of one subscription")
    async def deliveries(
        sub_id: str, request: Request, status: str | None = None, limit: int = 100
    ) -> Response:
        _, account = await signed(request)
        await run_in_threadpool(store.get, sub_id, account)
        rows = await run_in_threadpool(
            lambda: store.deliveries(sub_id, status=status, limit=max(1, min(limit, 1000)))
        )
        return _json(200, {"subscription": sub_id, "deliveries": rows})

    @app.post("/v1/subscriptions/{sub_id}/redeliver", summary="Deliver parked (or named) alerts again")
    async def redeliver(sub_id: str, request: Request) -> Response:
        body, account = await signed(request)
        req = parse_body(RedeliverRequest, body or b"{}")
        sub = await run_in_threadpool(store.get, sub_id, account)
        if not sub.active:
            raise MalformedRequestError(f"subscription {sub_id} has ended ({sub.ended})")
        dues = await run_in_threadpool(store.redeliver, sub_id, req.alert_ids, int(time.time() * 1000))
        dispatcher.requeue(dues)
        return _json(200, {"subscription": sub_id, "requeued": [d.alert_id for d in dues]})

    @app.delete("/v1/subscriptions/{sub_id}", summary="End a subscription")
    async def unsubscribe(sub_id: str, request: Request) -> Response:
        _, account = await signed(request)
        await run_in_threadpool(store.get, sub_id, account)
        await run_in_threadpool(dispatcher.end, sub_id, "ended by the subscriber")
        return _json(200, {"subscription": sub_id, "active": False})

    return app
