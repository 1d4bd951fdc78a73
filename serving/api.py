"""The SQL HTTP API (``pcc serve``): the entry module of the serving layer.

``create_app(config, billing)`` wires the engine (:mod:`serving.engine.views`), the
sandbox and metering (:mod:`serving.engine.query`), signed requests
(:mod:`serving.auth`), receipts and settlement.  OpenAPI at ``/docs``.

Endpoints: ``POST /v1/query``, ``POST /v1/quote``, ``GET /v1/catalog``,
``GET /v1/domain``, ``GET /v1/receipts``, ``GET /v1/proof/{event_id}``, ``GET /v1/health``; with an
access service, the owner endpoints of :mod:`serving.access`
(``/v1/owner/grants``, ``/v1/owner/revoke``, ``/v1/gdpr/export``, ``/v1/gdpr/erase``).

Signed endpoints check the signature over the raw body first (401), then
parse it (400 naming what is wrong): an unsigned request learns nothing about
the body it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from pipelines.access import AccessService, parse_public_key
from pipelines.errors import PccError
from serving.access import (
    ARROW_METADATA_KEY,
    HEADER_WRAPPED,
    AccessError,
    WrappedKeys,
    encode_wrapped,
    install_access_errors,
    owner_router,
    wrapped_keys_for,
)
from serving.auth import Authenticator, Consumer, service_domain
from serving.config import ServingConfig
from serving.engine.query import OverBudget, QueryRunner
from serving.engine.views import ServingStore
from serving.errors import MalformedRequestError, PaymentRequiredError, ServingError, http_status
from serving.inline import InlineGate
from serving.passport.verify import AuditPaths
from serving.pricing import Billing, Quote, view_categories
from serving.proof import proof_router
from serving.receipts import ReceiptStore
from serving.settlement import SettlementLoop, Settler

ARROW_STREAM = "application/vnd.apache.arrow.stream"
_M = TypeVar("_M", bound=BaseModel)


class QueryRequest(BaseModel):
    sql: str = Field(
        description="One SELECT over the serving views.", examples=["SELECT count(*) FROM vehicle_history"]
    )
    format: Literal["json", "csv", "arrow"] = Field("json", description="Result encoding.")
    grant_key: str | None = Field(
        None,
        description="The consumer's X25519 public key (64 hex): the answer also carries the data keys "
        "its grants allow, wrapped to it, to open protected fields client-side.",
    )


class QuoteRequest(BaseModel):
    sql: str = Field(description="The query to price without running it for its rows.")


def parse_body(model: type[_M], raw: bytes) -> _M:
    """The request body as ``model``, else :class:`MalformedRequestError` naming each problem."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise MalformedRequestError(f"malformed request body ({problems})") from None


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def service_key(config: ServingConfig) -> str:
    """The key that signs receipts: from settings, else a key file created once under the state dir."""
    if config.signing_key:
        return config.signing_key
    path = config.state_dir / "receipt-signer.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("0x" + secrets.token_hex(32), encoding="ascii")
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text(encoding="ascii").strip()


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


def _json_default(value: Any) -> Any:
    return str(value)


class Answer(NamedTuple):
    """An HTTP answer built off the event loop: status, body, media type, extra headers."""

    status: int
    body: bytes
    media_type: str
    headers: dict[str, str]

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, media_type=self.media_type, headers=self.headers)


class Ticket(NamedTuple):
    """An admitted paid query: its signature checked, its nonce spent (in memory), its body parsed."""

    consumer: Consumer
    body: QueryRequest
    #: its shape (:mod:`serving.inline`), None when inline answers are off
    shape: Hashable | None = None


def error_answer(exc: ServingError | AccessError) -> Answer:
    """The JSON error body and status of a refused request (as the app's exception handlers give it)."""
    if isinstance(exc, AccessError):
        return Answer(
            exc.status, orjson.dumps({"error": exc.kind, "message": exc.message}), "application/json", {}
        )
    return Answer(http_status(exc), orjson.dumps(exc.detail(), default=_json_default), "application/json", {})


def encode_result(
    table: pa.Table,
    fmt: str,
    headers: dict[str, str],
    receipt: dict[str, Any],
    wrapped: WrappedKeys | None = None,
) -> Answer:
    if wrapped is not None and fmt == "arrow":
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), ARROW_METADATA_KEY: encode_wrapped(wrapped).encode()}
        )
    elif wrapped is not None and fmt == "csv":
        headers = {**headers, HEADER_WRAPPED: encode_wrapped(wrapped)}
    if fmt == "arrow":
        # written into Arrow's own growing buffer (half the cost of a BytesIO), copied out once
        stream = pa.BufferOutputStream()
        with pa.ipc.new_stream(stream, table.schema) as writer:
            writer.write_table(table)
        return Answer(200, stream.getvalue().to_pybytes(), ARROW_STREAM, headers)
    if fmt == "csv":
        sink = io.BytesIO()
        pacsv.write_csv(table, sink)
        return Answer(200, sink.getvalue(), "text/csv; charset=utf-8", headers)
    columns = table.column_names
    data = table.to_pydict()
    rows = [list(r) for r in zip(*(data[c] for c in columns), strict=True)] if columns else []
    body = {
        "columns": columns,
        "types": [str(t) for t in table.schema.types],
        "rows": rows,
        "receipt": receipt,
    }
    if wrapped is not None:
        body["wrapped_keys"] = wrapped
    return Answer(
        200,
        orjson.dumps(body, default=_json_default, option=orjson.OPT_NON_STR_KEYS),
        "application/json",
        headers,
    )


_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
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

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        answer = self.answer_query
        if (
            answer is None
            or scope["type"] != "http"
            or scope["path"] != QUERY_PATH
            or scope["method"] != "POST"
            or scope.get("root_path")
        ):
            await super().__call__(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nothing was checked or run
            chunks.append(message.get("body", b""))
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
            if isinstance(result, Ticket):  # stopped at the budget, nothing charged: a worker finishes it
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


def create_app(
    config: ServingConfig,
    billing: Billing,
    store: ServingStore | None = None,
    background: bool = True,
    audit_paths: AuditPaths | None = None,
    access: AccessService | None = None,
) -> FastAPI:
    """The serving API over ``config.data_dir``, billed through ``billing``.

    ``audit_paths`` finds an event's audit path for ``GET /v1/proof`` when the
    dataset carries none (e.g. :class:`serving.passport.LeafFilePaths`).
    ``access`` (the identity vault and grant store) releases wrapped data keys
    to grantees and serves the owner endpoints; without it answers stay sealed.
    """
    store = store or ServingStore(config)
    store.refresh()
    runner = QueryRunner(store, billing, config)
    inline_budget_s = config.inline_budget_ms / 1000
    gate = InlineGate(inline_budget_s if inline_budget_s < config.query_timeout_s else 0.0)
    receipts = ReceiptStore(config.state_dir / "receipts.sqlite", service_key(config))
    auth = Authenticator(receipts, config.max_request_age_s, service_domain(config, billing))
    settler = Settler(receipts, billing)
    loops = [RefreshLoop(store, config.refresh_s), SettlementLoop(settler, config.settle_every_s)]

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

    install_access_errors(app)

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
        return JSONResponse(exc.detail(), status_code=http_status(exc))

    async def consumer_of(request: Request, deferred: bool = False) -> Consumer:
        body = await request.body()
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return auth.verify(request.method, target, body, request.headers, deferred)

    def payable(consumer: Consumer, quote: Quote) -> None:
        """402 with the quote unless the consumer can pay it (funds minus unsettled receipts)."""
        pending = receipts.pending_cents(consumer.account)
        available = billing.available(consumer.account) - pending
        if available < quote.amount_cents:  # never refused on a cached read: read the chain again
            available = billing.available(consumer.account, fresh=True) - pending
        if available < quote.amount_cents:
            raise PaymentRequiredError(
                f"the query costs {quote.amount_cents} cents; account {consumer.account} can pay {available}",
                quote.as_dict(),
            )

    def charge(consumer: Consumer, sql: str, quote: Quote) -> dict[str, Any]:
        payable(consumer, quote)
        query_hash = hashlib.sha256(sql.encode()).hexdigest()
        return receipts.issue(consumer.account, consumer.nonce, query_hash, quote, consumer.expires)

    def admit(
        method: str, target: str, headers: Mapping[str, str], raw: bytes, shape: Hashable | None
    ) -> Ticket | Answer:
        """Signature and nonce checked (the nonce spent in memory), body parsed; else the error's answer."""
        try:
            consumer = auth.verify(method, target, raw, headers, deferred=True)
        except ServingError as exc:
            return error_answer(exc)
        try:
            body = parse_body(QueryRequest, raw)
            if body.grant_key is not None:
                try:
                    parse_public_key(body.grant_key)
                except PccError as exc:
                    raise MalformedRequestError(f"grant_key: {exc.message}") from None
                if access is None:
                    raise MalformedRequestError(
                        "grant_key: this service has no access service (identity vault)"
                    )
        except ServingError as exc:
            receipts.record_nonce(consumer.account, consumer.nonce, consumer.expires)
            return error_answer(exc)
        return Ticket(consumer, body, shape)

    def execute(ticket: Ticket, budget_s: float | None = None) -> Answer | None:
        """Run an admitted query, charge it and encode its answer, in the calling thread.

        Everything that can fail runs before the receipt (a failed answer costs nothing);
        the receipt is committed, with the nonce, before the answer is returned — or the
        nonce alone if it failed.  With ``budget_s``: None when the run was stopped at the
        budget (nothing charged, the nonce still pending: run it again without one).
        """
        consumer, body = ticket.consumer, ticket.body
        started = time.perf_counter()
        issued: dict[str, Any] = {}
        stopped = False
        try:
            result = runner.run(body.sql, lambda quote: payable(consumer, quote), budget_s)
            wrapped: WrappedKeys | None = None
            if body.grant_key is not None:
                assert access is not None
                try:
                    wrapped = wrapped_keys_for(access, body.grant_key, result.table)
                except PccError as exc:
                    raise AccessError(exc) from None
            issued.update(charge(consumer, body.sql, result.quote))  # durable before the answer leaves
        except OverBudget:
            stopped = True
            return None
        except (ServingError, AccessError) as exc:
            return error_answer(exc)
        finally:
            if not issued and not stopped:
                receipts.record_nonce(consumer.account, consumer.nonce, consumer.expires)
        headers_out = {
            "X-PCC-Receipt": str(issued["receipt_no"]),
            "X-PCC-Price-Cents": str(issued["amount_cents"]),
            "X-PCC-Batch-Version": str(result.version or ""),
        }
        answer = encode_result(result.table, body.format, headers_out, issued, wrapped)
        gate.record(ticket.shape, time.perf_counter() - started)
        return answer

    def answer_query(method: str, target: str, headers: Mapping[str, str], raw: bytes) -> Answer:
        """One paid query, from its signed bytes to its encoded answer, in the calling (worker) thread."""
        ticket = admit(method, target, headers, raw, gate.shape_of(raw) if gate.enabled else None)
        if isinstance(ticket, Answer):
            return ticket
        answer = execute(ticket)
        assert answer is not None  # no budget: never stopped early
        return answer

    def answer_inline(
        method: str, target: str, headers: Mapping[str, str], raw: bytes
    ) -> Answer | Ticket | None:
        """The event loop's own attempt: None if the query's shape is not known to be fast (nothing
        was done); a :class:`Ticket` if its run was stopped at the budget (to finish in a worker)."""
        shape = gate.shape_of(raw)
        if not gate.eligible(shape):
            return None
        ticket = admit(method, target, headers, raw, shape)
        if isinstance(ticket, Answer):
            return ticket
        if not billing.ready(ticket.consumer.account):
            return ticket  # its prices or funds need the chain: no network I/O on the event loop
        answer = execute(ticket, gate.budget_s)
        if answer is None:
            gate.stopped(shape)
            return ticket
        gate.inline_answers += 1
        return answer

    @app.post(
        "/v1/query",
        summary="Run one SELECT and pay for the rows it uses",
        openapi_extra=_body_doc(QueryRequest),
    )
    async def query(request: Request) -> Response:
        # reached under a root_path only: ServingApp answers POST /v1/query itself, the same way
        body = await request.body()
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        answer = await run_in_threadpool(answer_query, request.method, target, request.headers, body)
        return answer.response()

    app.answer_query = answer_query
    if gate.enabled:
        app.answer_inline, app.finish = answer_inline, execute

    @app.post(
        "/v1/quote",
        summary="Price a query in PCC_token cents without paying (dry run)",
        openapi_extra=_body_doc(QuoteRequest),
    )
    async def quote(request: Request) -> dict[str, Any]:
        consumer = await consumer_of(request)
        body = parse_body(QuoteRequest, await request.body())

        def priced() -> tuple[Quote, int]:  # a worker thread: the funds may be read from the chain
            _, q = runner.quote(body.sql)
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
            "limits": {"max_rows": config.max_rows, "timeout_s": config.query_timeout_s},
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

    @app.get("/v1/health", summary="Liveness and the published batch version")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "batch_version": store.version, "watermark": store.watermark}

    return app


def data_dir_of(app: FastAPI) -> Path:
    return Path(app.state.store.config.data_dir)
