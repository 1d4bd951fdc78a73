"""One paid query, from its signed bytes to its encoded answer: admit, execute, answer.

No web framework here: the ASGI fast path and the documented FastAPI route of
``POST /v1/query`` (:mod:`serving.api`) both call :meth:`PaidQueries.answer`.
The order is the contract with consumers and producers (docs/serving.md):

1. **Authenticate before parsing.**  The body's size was bounded before it was
   read; the signature over the raw bytes is checked (and the nonce spent in
   memory) before the body is parsed: an unsigned request costs a hash and a
   signature check, nothing else.
2. **Hold funds before work.**  The consumer's rate and queries in flight are
   counted (429), then part of its free funds is held (402 if nothing is free)
   before the engine sees the SQL (:mod:`serving.market.reservations`).
3. **Answer, then charge.**  The query runs, its price is metered, the answer is
   fully encoded; only then is the hold turned into the receipt's amount (402 if
   the query cost more than the account can pay) and the receipt committed.
   A query that fails at any step before that costs nothing.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
from pydantic import BaseModel, Field, ValidationError

from pipelines.access import AccessService, parse_public_key
from pipelines.errors import PccError
from serving.auth import Authenticator, Consumer
from serving.config import ServingConfig
from serving.engine.query import OverBudget, QueryRunner
from serving.engine.shapes import ShapeCache
from serving.errors import MalformedRequestError, RequestTooLargeError, ServingError, http_status
from serving.inline import InlineGate
from serving.market.pricing import Billing
from serving.market.receipts import ReceiptStore
from serving.market.reservations import Hold, Reservations
from serving.sealed import (
    ARROW_METADATA_KEY,
    HEADER_WRAPPED,
    AccessError,
    WrappedKeys,
    encode_wrapped,
    wrapped_keys_for,
)

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
    max_cents: int | None = Field(
        None,
        gt=0,
        description="The most this query may cost, in PCC_token cents: held from the account's free "
        "funds before it runs; a query that would cost more is refused (402) and costs nothing.",
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


def _json_default(value: Any) -> Any:
    return str(value)


class Answer(NamedTuple):
    """An HTTP answer built off the event loop: status, body, media type, extra headers."""

    status: int
    body: bytes
    media_type: str
    headers: dict[str, str]


def error_answer(exc: ServingError) -> Answer:
    """The JSON error body and status of a refused request (the app's exception handler gives the same)."""
    headers: dict[str, str] = {}
    retry = getattr(exc, "retry_after_s", None)
    if retry is not None:
        headers["Retry-After"] = str(retry)
    return Answer(
        http_status(exc), orjson.dumps(exc.detail(), default=_json_default), "application/json", headers
    )


def _flat_for_csv(table: pa.Table) -> pa.Table:
    """Nested columns (lists, structs, maps) as JSON text: CSV has no nested values."""
    for i, f in enumerate(table.schema):
        if pa.types.is_nested(f.type):
            text = [
                None
                if v is None
                else orjson.dumps(v, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
                for v in table.column(i).to_pylist()
            ]
            table = table.set_column(i, pa.field(f.name, pa.string()), pa.array(text, pa.string()))
    return table


@dataclass(frozen=True)
class Encoded:
    """An answer's bytes before its receipt exists; :meth:`with_receipt` completes it."""

    body: bytes
    media_type: str
    headers: dict[str, str]
    #: the JSON body ends with the receipt (spliced in, the rows are not encoded again)
    json_receipt: bool

    def with_receipt(self, issued: dict[str, Any], version: str | None) -> Answer:
        headers = {
            **self.headers,
            "X-PCC-Receipt": str(issued["receipt_no"]),
            "X-PCC-Price-Cents": str(issued["amount_cents"]),
            "X-PCC-Batch-Version": str(version or ""),
        }
        body = self.body
        if self.json_receipt:
            body = body[:-1] + b',"receipt":' + orjson.dumps(issued, default=_json_default) + b"}"
        return Answer(200, body, self.media_type, headers)


def encode_result(table: pa.Table, fmt: str, wrapped: WrappedKeys | None = None) -> Encoded:
    """The answer's bytes in ``fmt`` (everything that can fail while encoding fails here)."""
    headers: dict[str, str] = {}
    if wrapped is not None and fmt == "arrow":
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), ARROW_METADATA_KEY: encode_wrapped(wrapped).encode()}
        )
    elif wrapped is not None and fmt == "csv":
        headers[HEADER_WRAPPED] = encode_wrapped(wrapped)
    if fmt == "arrow":
        # written into Arrow's own growing buffer (half the cost of a BytesIO), copied out once
        stream = pa.BufferOutputStream()
        with pa.ipc.new_stream(stream, table.schema) as writer:
            writer.write_table(table)
        return Encoded(stream.getvalue().to_pybytes(), ARROW_STREAM, headers, False)
    if fmt == "csv":
        sink = io.BytesIO()
        pacsv.write_csv(_flat_for_csv(table), sink)
        return Encoded(sink.getvalue(), "text/csv; charset=utf-8", headers, False)
    columns = table.column_names
    data = table.to_pydict()
    rows = [list(r) for r in zip(*(data[c] for c in columns), strict=True)] if columns else []
    body: dict[str, Any] = {"columns": columns, "types": [str(t) for t in table.schema.types], "rows": rows}
    if wrapped is not None:
        body["wrapped_keys"] = wrapped
    raw = orjson.dumps(body, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    return Encoded(raw, "application/json", headers, True)


class Ticket(NamedTuple):
    """An admitted paid query: signed, within its rates, its body parsed, its funds held."""

    consumer: Consumer
    body: QueryRequest
    hold: Hold
    #: its shape (:mod:`serving.inline`), None when inline answers are off
    shape: Hashable | None = None
    #: its shape for the price estimate (held before the next run of the same shape)
    priced_as: Hashable | None = None


class PaidQueries:
    """Admits, executes and answers paid queries (thread-safe; called from worker threads or the loop)."""

    def __init__(
        self,
        config: ServingConfig,
        runner: QueryRunner,
        billing: Billing,
        receipts: ReceiptStore,
        auth: Authenticator,
        reservations: Reservations,
        gate: InlineGate,
        access: AccessService | None = None,
        producer_problems: Callable[[Iterable[str]], Mapping[str, str]] | None = None,
    ) -> None:
        self.config = config
        self.runner = runner
        self.billing = billing
        self.receipts = receipts
        self.auth = auth
        self.reservations = reservations
        self.gate = gate
        self.access = access
        #: the producers of a quote the Marketplace cannot pay, each with why (not registered, suspended)
        self.producer_problems = producer_problems
        #: the last price of each query shape: what the next run of the shape holds before it runs
        self._last_price: ShapeCache[int] = ShapeCache(4096)

    def pending(self, consumer: Consumer) -> Callable[[], int]:
        return lambda: self.receipts.pending_cents(consumer.account)

    # -- 1 and 2: admission -------------------------------------------------------------------
    def admit(self, method: str, target: str, headers: Mapping[str, str], raw: bytes) -> Ticket | Answer:
        """Signature, nonce, rate, body and held funds; else the refusal's answer (nothing held)."""
        if len(raw) > self.config.max_body_bytes:
            return error_answer(
                RequestTooLargeError(f"the request body exceeds {self.config.max_body_bytes} bytes")
            )
        try:
            consumer = self.auth.verify(method, target, raw, headers, deferred=True)
        except ServingError as exc:
            return error_answer(exc)
        try:
            self.reservations.admit(consumer.account)
            body = parse_body(QueryRequest, raw)
            if body.grant_key is not None:
                try:
                    parse_public_key(body.grant_key)
                except PccError as exc:
                    raise MalformedRequestError(f"grant_key: {exc.message}") from None
                if self.access is None:
                    raise MalformedRequestError(
                        "grant_key: this service has no access service (identity vault)"
                    )
            shape = InlineGate.shape_of(body.sql, body.format, body.grant_key)
            want = body.max_cents or (self._last_price.peek(shape) if shape is not None else None)
            hold = self.reservations.hold(consumer.account, self.pending(consumer), want)
        except ServingError as exc:
            self.receipts.record_nonce(consumer.account, consumer.nonce, consumer.expires)
            return error_answer(exc)
        return Ticket(consumer, body, hold, shape if self.gate.enabled else None, shape)

    # -- 3: execution --------------------------------------------------------------------------
    def execute(self, ticket: Ticket, budget_s: float | None = None) -> Answer | None:
        """Run an admitted query, encode its answer, then charge it, in the calling thread.

        With ``budget_s``: None when the run was stopped at the budget (nothing charged, the
        nonce pending and the funds still held: run it again without one).
        """
        consumer, body, hold = ticket.consumer, ticket.body, ticket.hold
        started = time.perf_counter()
        issued: dict[str, Any] = {}
        stopped = False
        try:
            result = self.runner.run(body.sql, budget_s=budget_s)
            wrapped: WrappedKeys | None = None
            if body.grant_key is not None:
                assert self.access is not None
                try:
                    wrapped = wrapped_keys_for(self.access, body.grant_key, result.table)
                except PccError as exc:
                    raise AccessError(exc) from None
            encoded = encode_result(result.table, body.format, wrapped)
            quote = result.quote
            if body.max_cents is not None and quote.amount_cents > body.max_cents:
                from serving.errors import PaymentRequiredError

                raise PaymentRequiredError(
                    f"the query costs {quote.amount_cents} cents, more than its max_cents {body.max_cents}",
                    quote.as_dict(),
                )
            if self.producer_problems is not None:
                ready = getattr(self.billing, "producers_ready", None)
                if budget_s is not None and ready is not None and not ready(quote.by_producer):
                    raise OverBudget  # the registry must be read: not on the event loop
                quote = quote.paying(self.producer_problems(quote.by_producer))
            hold.cover(quote.amount_cents, self.pending(consumer))
            query_hash = hashlib.sha256(body.sql.encode()).hexdigest()
            issued.update(
                self.receipts.issue(consumer.account, consumer.nonce, query_hash, quote, consumer.expires)
            )
        except OverBudget:
            stopped = True
            return None
        except ServingError as exc:
            return error_answer(exc)
        finally:
            if not stopped:
                hold.release()
                if not issued:
                    self.receipts.record_nonce(consumer.account, consumer.nonce, consumer.expires)
        if ticket.priced_as is not None:
            self._last_price.put(ticket.priced_as, int(issued["amount_cents"]))
        answer = encoded.with_receipt(issued, result.version)
        self.gate.record(ticket.shape, time.perf_counter() - started)
        return answer

    def answer(self, method: str, target: str, headers: Mapping[str, str], raw: bytes) -> Answer:
        """One paid query, from its signed bytes to its encoded answer, in the calling (worker) thread."""
        ticket = self.admit(method, target, headers, raw)
        if isinstance(ticket, Answer):
            return ticket
        answer = self.execute(ticket)
        assert answer is not None  # no budget: never stopped early
        return answer

    def answer_inline(
        self, method: str, target: str, headers: Mapping[str, str], raw: bytes
    ) -> Answer | Ticket | None:
        """The event loop's own attempt on an idle service (the signature is checked here either way):
        a :class:`Ticket` if it must finish in a worker (its shape not known to be fast, its prices or
        funds need the chain, or it was stopped at the budget: funds held, nothing charged)."""
        if not self.gate.enabled:
            return None
        ticket = self.admit(method, target, headers, raw)
        if isinstance(ticket, Answer):
            return ticket
        if not self.gate.eligible(ticket.shape) or not self.billing.ready(ticket.consumer.account):
            return ticket  # not known fast, or its prices or funds need the chain: a worker runs it
        answer = self.execute(ticket, self.gate.budget_s)
        if answer is None:
            self.gate.stopped(ticket.shape)
            return ticket
        self.gate.inline_answers += 1
        return answer
