"""The SQL HTTP API (``pcc serve``): the entry module of the serving layer.

``create_app(config, billing)`` wires the engine (:mod:`serving.engine.views`), the
sandbox and metering (:mod:`serving.engine.query`), signed requests
(:mod:`serving.auth`), receipts and settlement.  OpenAPI at ``/docs``.

Endpoints: ``POST /v1/query``, ``POST /v1/quote``, ``GET /v1/catalog``,
``GET /v1/domain``, ``GET /v1/receipts``, ``GET /v1/proof/{event_id}``, ``GET /v1/health``; with an
access service, the owner endpoints of :mod:`serving.access`
(``/v1/owner/grants``, ``/v1/owner/revoke``, ``/v1/gdpr/export``, ``/v1/gdpr/erase``);
with the ledger's sources too, the key service of :mod:`serving.keys` (``/v1/keys/...``).

Signed endpoints check the signature over the raw body first (401), then
parse it (400 naming what is wrong): an unsigned request learns nothing about
the body it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, SecretStr

from pipelines.access import AccessService
from pipelines.files import atomic_write
from serving.access import owner_router
from serving.auth import (
    HEADER_ACCOUNT,
    HEADER_EXPIRES,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    Authenticator,
    Consumer,
    service_domain,
    signed_target,
)
from serving.bodylimit import bounded, declared_too_large, too_large
from serving.config import ServingConfig
from serving.engine.query import QueryRunner
from serving.engine.views import ServingStore
from serving.errors import AuthenticationError, ServingError
from serving.ingest.sources import SourceDirectory
from serving.inline import InlineGate
from serving.market.pricing import Billing, Quote, view_categories
from serving.market.receipts import ReceiptStore
from serving.market.reservations import Reservations
from serving.market.settlement import SettlementLoop, Settler
from serving.paid import Answer, PaidQueries, QueryRequest, QuoteRequest, Ticket, error_answer, parse_body
from serving.passport.verify import AuditPaths
from serving.proof import proof_router


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def service_key(config: ServingConfig) -> SecretStr:
    """The key that signs receipts: from settings, else a key file created once under the state dir."""
    if config.signing_key:
        return config.signing_key
    path = config.state_dir / "receipt-signer.key"
    if not path.exists():
        atomic_write(path, "0x" + secrets.token_hex(32), encoding="ascii", mode=0o600)
    return SecretStr(path.read_text(encoding="ascii").strip())


class RefreshLoop:
    """Picks up new real-time segments and batch versions in a daemon thread."""

    def __init__(self, store: ServingStore, interval_s: float) -> None:
        self.store = store
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pcc-refresh", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(ServingError):
                self.store.refresh()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _response(answer: Answer) -> Response:
    return Response(
        answer.body, status_code=answer.status, media_type=answer.media_type, headers=answer.headers
    )


_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


_SIGNED_HEADERS = tuple(
    (h.lower().encode("latin-1"), h) for h in (HEADER_ACCOUNT, HEADER_NONCE, HEADER_EXPIRES, HEADER_SIGNATURE)
)


def _unsigned(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The first signing header a request lacks (None: it has them all, to be checked in full later)."""
    present = {k for k, v in headers if v}
    return next((name for raw, name in _SIGNED_HEADERS if raw not in present), None)


#: the worker threads of paid queries (as many as anyio's default thread pool), shared by every app
_WORKERS = ThreadPoolExecutor(max_workers=40, thread_name_prefix="pcc-query")
#: the paid query's path, answered by :class:`ServingApp` without FastAPI's routing
QUERY_PATH = "/v1/query"


class ServingApp(FastAPI):
    """FastAPI with ``POST /v1/query`` answered straight from ASGI (documented by its FastAPI route).

    The paid query is the hot path: routing, middleware, dependency solving and
    the response classes cost more than a third of the API's own time per
    query.  Here the body is read, then signature check, query, receipt and
    encoding run in one hop to a worker thread (``answer_query``), and the bytes
    are sent.  Everything else (and a query under a ``root_path``) goes through
    FastAPI, whose ``/v1/query`` route calls the same ``answer_query``.  When no
    other paid query is in flight and the query's shape has been fast, the event
    loop answers it itself within a time budget (:mod:`serving.inline`).
    """

    answer_query: Callable[[str, str, Mapping[str, str], bytes], Answer] | None = None
    #: the loop's own attempt and the worker's finish of a stopped one (:mod:`serving.inline`)
    answer_inline: Callable[[str, str, Mapping[str, str], bytes], Answer | Ticket | None] | None = None
    finish: Callable[[Ticket], Answer | None] | None = None
    #: paid queries being answered (read and written by the event loop only)
    active_queries = 0

    #: request bodies larger than this are refused (413) before the rest is read
    max_body_bytes = 64 * 1024

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        answer = self.answer_query
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        limit = self.max_body_bytes
        if declared_too_large(scope["headers"], limit):
            await self._send(send, error_answer(too_large(limit)))
            return
        if (
            answer is None
            or scope["path"] != QUERY_PATH
            or scope["method"] != "POST"
            or scope.get("root_path")
        ):
            await super().__call__(scope, bounded(receive, limit), send)
            return
        missing = _unsigned(scope["headers"])
        if missing is not None:  # refused on the loop before its body is read: an unsigned request is cheap
            await self._send(
                send, error_answer(AuthenticationError(f"missing header {missing}: requests must be signed"))
            )
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nothing was checked or run
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._send(send, error_answer(too_large(limit)))
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"")
        target = QUERY_PATH + (f"?{query.decode('latin-1')}" if query else "")
        loop = asyncio.get_running_loop()
        self.active_queries += 1
        try:
            result: Answer | Ticket | None = None
            if self.answer_inline is not None:
                await asyncio.sleep(0)  # requests that arrived with this one count themselves first
                if self.active_queries == 1:
                    result = self.answer_inline("POST", target, headers, body)
            if isinstance(result, Ticket):  # admitted, funds held, nothing charged: a worker finishes it
                assert self.finish is not None
                result = await loop.run_in_executor(_WORKERS, self.finish, result)
            elif result is None:
                result = await loop.run_in_executor(_WORKERS, answer, "POST", target, headers, body)
            assert isinstance(result, Answer)  # without a budget a run is never stopped early
            await self._send(send, result)
        finally:
            self.active_queries -= 1

    @staticmethod
    async def _send(send: _Send, result: Answer) -> None:
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in result.headers.items()]
        await send(
            {
                "type": "http.response.start",
                "status": result.status,
                "headers": [
                    (b"content-type", result.media_type.encode("latin-1")),
                    (b"content-length", str(len(result.body)).encode("latin-1")),
                    *raw,
                ],
            }
        )
        await send({"type": "http.response.body", "body": result.body})


def create_app(  # noqa: C901, PLR0915 (routes are closures over the app's state)
    config: ServingConfig,
    billing: Billing,
    store: ServingStore | None = None,
    background: bool = True,
    audit_paths: AuditPaths | None = None,
    access: AccessService | None = None,
    producers: SourceDirectory | None = None,
) -> FastAPI:
    """The serving API over ``config.data_dir``, billed through ``billing``.

    ``audit_paths`` finds an event's audit path for ``GET /v1/proof`` when the
    dataset carries none (e.g. :class:`serving.passport.LeafFilePaths`).
    ``access`` (the identity vault and grant store) releases wrapped data keys
    to grantees and serves the owner endpoints; without it answers stay sealed.
    ``producers`` (the ledger's registered sources) with ``access`` also serves the
    key service to producers of other organisations (:mod:`serving.keys`).
    """
    store = store or ServingStore(config)
    store.refresh()
    runner = QueryRunner(store, billing, config)
    inline_budget_s = config.inline_budget_ms / 1000
    gate = InlineGate(inline_budget_s if inline_budget_s < config.query_timeout_s else 0.0)
    receipts = ReceiptStore(config.state_dir / "receipts.sqlite", service_key(config))
    auth = Authenticator(receipts, config.max_request_age_s, service_domain(config, billing))
    settler = Settler(receipts, billing)
    reservations = Reservations(
        billing.available, config.hold_cents, config.max_in_flight, config.rate_per_s, config.rate_burst
    )
    loops: list[RefreshLoop | SettlementLoop] = [
        RefreshLoop(store, config.refresh_s),
        SettlementLoop(settler, config.settle_every_s),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if background:
            for loop in loops:
                loop.start()
        try:
            yield
        finally:
            if background:
                for loop in loops:
                    loop.stop()

    app = ServingApp(
        title="PCC serving API",
        version="1",
        description="Paid SQL over every car's fresh, scored history. Requests are signed (EIP-712, "
        "domain at /v1/domain); "
        "prices are in PCC_token cents.",
        lifespan=lifespan,
    )
    app.state.store, app.state.runner, app.state.receipts, app.state.settler = (
        store,
        runner,
        receipts,
        settler,
    )
    app.state.inline = gate

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> Response:
        return _response(error_answer(exc))  # the one way an error becomes an answer

    async def consumer_of(request: Request, deferred: bool = False) -> Consumer:
        body = await request.body()
        return auth.verify(request.method, signed_target(request), body, request.headers, deferred)

    app.max_body_bytes = config.max_body_bytes
    # a receipt only pays producers the Marketplace can pay (registered and active); the rows of the
    # others are paid to the consortium, so a suspended producer blocks nobody's query
    producer_problems = getattr(billing, "producer_problems", None)
    paid = PaidQueries(config, runner, billing, receipts, auth, reservations, gate, access, producer_problems)
    app.state.paid = paid

    @app.post(
        "/v1/query",
        summary="Run one SELECT and pay for the rows it uses",
        openapi_extra=_body_doc(QueryRequest),
    )
    async def query(request: Request) -> Response:
        # reached under a root_path only: ServingApp answers POST /v1/query itself, the same way
        body = await request.body()
        answer = await run_in_threadpool(paid.answer, request.method, signed_target(request), request.headers, body)
        return _response(answer)

    app.answer_query = paid.answer
    if gate.enabled:
        app.answer_inline, app.finish = paid.answer_inline, paid.execute

    @app.post(
        "/v1/quote",
        summary="Price a query in PCC_token cents without paying (dry run)",
        openapi_extra=_body_doc(QuoteRequest),
    )
    async def quote(request: Request) -> dict[str, Any]:
        consumer = await consumer_of(request)
        reservations.admit(consumer.account)
        body = parse_body(QuoteRequest, await request.body())

        def priced() -> tuple[Quote, int]:  # a worker thread: the funds may be read from the chain
            # a dry run is engine work too: only for an account with funds free (nothing is charged)
            hold = reservations.hold(consumer.account, paid.pending(consumer), 1)
            try:
                _, q = runner.quote(body.sql)
            finally:
                hold.release()
            pending = receipts.pending_cents(consumer.account)
            return q, billing.available(consumer.account, fresh=True) - pending

        q, available = await run_in_threadpool(priced)
        return {**q.as_dict(), "available_cents": available, "sufficient": available >= q.amount_cents}

    @app.get("/v1/catalog", summary="Views, columns, data categories and prices")
    async def catalog() -> dict[str, Any]:
        prices = billing.prices()
        views = []
        for name, cols in store.columns().items():
            categories = view_categories(name)
            views.append(
                {
                    "name": name,
                    "columns": [{"name": c, "type": t} for c, t in cols],
                    "categories": categories,
                    "price_cents_per_row": {c: prices.get(c) for c in categories},
                }
            )
        return {
            "batch_version": store.version,
            "watermark": store.watermark,
            "fee_bps": billing.fee_bps(),
            "quality_weight_bps": config.quality_weight_bps,
            "limits": {
                "max_rows": config.max_rows,
                "timeout_s": config.query_timeout_s,
                "max_body_bytes": config.max_body_bytes,
                "max_in_flight": config.max_in_flight,
                "rate_per_s": config.rate_per_s,
                "hold_cents": config.hold_cents,
            },
            "functions": runner.sandbox.functions.catalog(),
            "receipt_signer": receipts.signer,
            "views": views,
        }

    @app.get("/v1/domain", summary="The EIP-712 domain, host and types requests are signed with")
    async def domain() -> dict[str, Any]:
        return auth.document()

    @app.get("/v1/receipts", summary="The signed receipts of the calling consumer")
    async def list_receipts(request: Request, limit: int = 100) -> dict[str, Any]:
        consumer = await consumer_of(request)
        return {"consumer": consumer.account, "receipts": receipts.for_consumer(consumer.account, limit)}

    app.include_router(proof_router(store, audit_paths, config.master_dir))
    if access is not None:
        app.include_router(owner_router(config, store, access, consumer_of, parse_body))
    if access is not None and producers is not None:
        from pipelines.access import KeyService, SqliteProducerKeys
        from serving.keys import keys_router

        service = KeyService(access.keys, SqliteProducerKeys(config.state_dir / "producer-keys.sqlite"))
        app.include_router(keys_router(service, producers, consumer_of, parse_body, reservations.admit))

    @app.get("/v1/health", summary="Liveness and the published batch version")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "batch_version": store.version, "watermark": store.watermark}

    return app


def data_dir_of(app: FastAPI) -> Path:
    return Path(app.state.store.config.data_dir)
