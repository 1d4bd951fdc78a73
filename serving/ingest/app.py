"""The ingest bridge over HTTP: ``pcc ingest serve``, or under ``/v1/events`` of ``pcc serve --ingest``.

``POST /v1/events/{source_id}`` takes one producer-input event or a JSON
Lines batch, signed by the source's registered key with the same EIP-712
request as queries (:mod:`serving.auth`: the deployment's domain, the
service's host, the method, path and SHA-256 of the body).  In this order,
each step before the next:

1. a body over ``ingest.max_body_bytes`` (1 MiB) or with more than
   ``ingest.max_lines`` (1,000) lines: 413, before anything is parsed;
2. the signature and its nonce: 401 (unsigned, forged, stale, replayed,
   signed for another deployment);
3. the signer must be the source's registered account, the source active: 403;
4. the source's broker or chain is down: 503; too many batches of the source
   waiting: 429 — both with ``Retry-After``, nothing of the batch logged;
5. the batch (:class:`serving.ingest.bridge.IngestBridge`): one answer per line.

OpenAPI at ``/docs`` of ``pcc ingest serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from serving.auth import Authenticator, RequestDomain
from serving.bodylimit import BodyLimitedApp
from serving.errors import (
    EventNotFoundError,
    RequestTooLargeError,
    ServingError,
    http_status,
)
from serving.ingest.bridge import BatchAnswer, IngestBridge, split_lines
from serving.ingest.config import IngestConfig
from serving.market.receipts import ReceiptStore

#: where the bridge answers, on its own or inside ``pcc serve``
EVENTS_PREFIX = "/v1/events"

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


class Checkpoint(BaseModel):
    tree_size: int
    root: str = Field(description="RFC 6962 root, 64 hex")
    tx_hash: str = Field(description="the AnchorRegistry transaction")


class LineAnswer(BaseModel):
    line: int = Field(description="line number in the body, 1-based")
    status: Literal["accepted", "duplicate", "refused"]
    event_id: str | None = Field(None, description="accepted or duplicate: the event's id")
    log_index: int | None = Field(None, description="accepted or duplicate: its index in the source's log")
    checkpoint: Checkpoint | None = Field(None, description="the anchored checkpoint it is proven against")
    published: bool | None = Field(None, description="Kafka acknowledged it")
    path: str | None = Field(None, description="refused: the JSON path of the first problem")
    reason: str | None = Field(None, description="refused: why")
    problems: list[str] | None = Field(None, description="refused: every problem, when more than one")


class BatchResult(BaseModel):
    source_id: str
    accepted: int
    duplicate: int = Field(description="lines whose event id was already accepted: answered again, not sent")
    refused: int
    lines: list[LineAnswer]
    error: str | None = Field(None, description="503: why the batch could not be anchored or published")
    message: str | None = None
    retry_after_s: int | None = None


class EventStatus(BaseModel):
    source_id: str
    event_id: str
    log_index: int
    checkpoint: Checkpoint | None
    published: bool


class Refusal(BaseModel):
    error: str
    message: str
    retry_after_s: int | None = None


_EXAMPLE = (
    '{"event_type": "odometer_reading", "schema_version": 1, "source_id": "garage-net-03", '
    '"vin": "1HGCM82633A004352", "event_time": "2026-03-01T08:15:00.000Z", "payload": {"odometer_km": 41235}}\n'
)
_POST_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One producer-input event (docs/events.md) or JSON Lines of them: at most 1,000 "
        "lines and 1 MiB. Give each line its event_id to make retries safe; a line without one gets an "
        "id derived from its content.",
        "content": {"application/x-ndjson": {"schema": {"type": "string"}, "example": _EXAMPLE}},
    }
}
_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": Refusal, "description": "unsigned, forged, stale, replayed or another deployment's"},
    403: {"model": Refusal, "description": "not the source's registered key, or the source is not active"},
    413: {"model": Refusal, "description": "over 1 MiB or 1,000 lines (nothing was parsed)"},
    429: {"model": Refusal, "description": "too many batches of this source waiting; see Retry-After"},
}


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _error(exc: ServingError) -> Response:
    retry = getattr(exc, "retry_after_s", None)
    return _json(http_status(exc), exc.detail(), {"Retry-After": str(retry)} if retry is not None else None)


class IngestApp(BodyLimitedApp):
    """The ingest app: bodies over ``max_body_bytes`` refused (413) before the rest is read."""

    max_body_bytes = 1024 * 1024

    def refusal(self, exc: ServingError) -> Response:
        return _error(exc)


def request_authenticator(config: IngestConfig, domain: RequestDomain) -> Authenticator:
    """Signed requests of the bridge: the queries' verification, with the bridge's own nonce file."""
    nonces = ReceiptStore(config.state_dir / "requests.sqlite", "0x" + secrets.token_hex(32))
    return Authenticator(nonces, config.max_request_age_s, domain)


def create_ingest_app(
    config: IngestConfig, bridge: IngestBridge, auth: Authenticator, background: bool = True
) -> FastAPI:
    """The bridge's HTTP API; ``background`` starts the retry loop and closes the bridge at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if background:
            bridge.start()
        try:
            yield
        finally:
            if background:
                await run_in_threadpool(bridge.close)
                auth.store.close()

    app = IngestApp(
        title="PCC ingest bridge",
        version="1",
        description="Producers without Kafka send their events over HTTPS: signed by the source's registered "
        "key (EIP-712, domain at /v1/domain), validated, pseudonymised, logged, anchored on the ledger and "
        "published to Kafka by the producer SDK. One answer per line.",
        lifespan=lifespan,
    )
    app.max_body_bytes = config.max_body_bytes
    app.state.bridge = bridge

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> Response:
        return _error(exc)

    async def signed(request: Request) -> tuple[bytes, str]:
        body, consumer = await auth.verify_request(request)
        return body, consumer.account

    @app.post(
        EVENTS_PREFIX + "/{source_id}",
        summary="Send one event or a JSON Lines batch as a registered source",
        openapi_extra=_POST_DOC,
        responses={
            200: {"model": BatchResult, "description": "one answer per line (some may be refused)"},
            422: {"model": BatchResult, "description": "every line was refused"},
            503: {
                "model": BatchResult,
                "description": "Kafka or the chain is down: what was accepted is kept and sent later; "
                "sending the same batch again is safe. See Retry-After",
            },
            **_REFUSALS,
        },
    )
    async def post_events(source_id: str, request: Request) -> Response:
        lines = split_lines(await request.body())  # counted before the signature or any line is parsed
        if len(lines) > config.max_lines:
            raise RequestTooLargeError(f"the batch has {len(lines)} lines; at most {config.max_lines}")
        _, account = await signed(request)
        source = await run_in_threadpool(bridge.source_for, source_id, account)
        if not lines:
            return _json(
                200, {"source_id": source_id, "accepted": 0, "duplicate": 0, "refused": 0, "lines": []}
            )
        answer: BatchAnswer = await asyncio.wrap_future(bridge.submit(source, lines))
        return _json(answer.status, answer.body, answer.headers)

    @app.get(
        EVENTS_PREFIX + "/{source_id}/{event_id}",
        summary="One accepted event: log index, checkpoint once anchored, published",
        responses={200: {"model": EventStatus}, 404: {"model": Refusal}, **_REFUSALS},
    )
    async def event_status(source_id: str, event_id: str, request: Request) -> Response:
        _, account = await signed(request)
        source = await run_in_threadpool(bridge.source_for, source_id, account)
        status = await run_in_threadpool(bridge.status, source, event_id)
        if status is None:
            raise EventNotFoundError(f"source {source_id} sent no event {event_id} through this bridge")
        return _json(200, status)

    @app.get("/v1/domain", summary="The EIP-712 domain, host and types requests are signed with")
    async def domain() -> dict[str, Any]:
        return auth.document()

    @app.get(EVENTS_PREFIX, summary="Liveness, and the sources whose broker or chain is down")
    async def health() -> dict[str, Any]:
        down = bridge.lanes_down()
        return {"status": "degraded" if down else "ok", "down": down, "limits": {
            "max_body_bytes": config.max_body_bytes, "max_lines": config.max_lines,
        }}  # fmt: skip

    return app


def with_ingest(main: ASGIApp, ingest: ASGIApp) -> ASGIApp:
    """One ASGI app: ``/v1/events...`` to the bridge, everything else (and lifespan) to ``main``."""

    async def dispatch(scope: _Scope, receive: _Receive, send: _Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == EVENTS_PREFIX or path.startswith(EVENTS_PREFIX + "/")):
            await ingest(scope, receive, send)
        else:
            await main(scope, receive, send)

    return dispatch
