"""A Python client for the serving API that signs every request with the consumer's key.

client = PccClient("http://127.0.0.1:8600", private_key)
client.quote("SELECT count(*) FROM vehicle_history")        # dict, price in cents
result = client.query("SELECT * FROM vehicle_history WHERE vehicle = 'v-…'")
result.rows, result.receipt                                   # or format="arrow" → result.table

Requests are signed with EIP-712 for the service's domain (chain id, Marketplace
contract, public host), which the client reads once from ``GET /v1/domain``;
pass ``domain`` to pin it instead, or ``chain_id`` to refuse a service on
another chain.

With ``grant_keys`` (the consumer's X25519 key pair, ``pcc grant keygen``) the
client sends its public key with each query and opens, on its side, the
protected fields its grants cover (``result.opened``); the service only ever
sees sealed tokens and returns the data keys wrapped to that key.
"""

from __future__ import annotations

import http.client
import io
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv

from pipelines.access import AccessDenied, ConsumerKeyPair, TamperedCiphertext
from pipelines.errors import PccNotFoundError, PccTransientError, PccValueError
from serving.auth import RequestDomain, sign_request
from serving.eip191 import Signer
from serving.errors import (
    AuthenticationError,
    ForbiddenQueryError,
    InvalidQueryError,
    MalformedRequestError,
    NotSourceKeyError,
    PaymentRequiredError,
    PriceUnavailableError,
    ProducerUnavailableError,
    ProofMismatchError,
    QueryTimeoutError,
    RequestTooLargeError,
    ResultTooLargeError,
    ServingError,
    TooManyRequestsError,
)
from serving.sealed import WrappedKeys, decode_wrapped, open_rows, wrapped_in


@dataclass
class ClientResult:
    """One paid query's answer."""

    table: pa.Table
    receipt: dict[str, Any] = field(default_factory=dict)
    price_cents: int = 0
    wrapped_keys: WrappedKeys = field(default_factory=dict)
    grant_keys: ConsumerKeyPair | None = None

    @property
    def rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.table.to_pylist()
        return rows

    @property
    def opened(self) -> list[dict[str, Any]]:
        """The rows with ``payload`` as an object, protected fields opened where a grant allows."""
        if self.grant_keys is None:
            return open_rows(self.rows, None, {})
        return open_rows(self.rows, self.grant_keys, self.wrapped_keys)


@dataclass(frozen=True)
class PassportReport:
    """One bought passport report: the page (HTML) or its data (JSON), and what it cost."""

    content: bytes
    media_type: str
    receipt_no: int
    price_cents: int

    @property
    def data(self) -> dict[str, Any]:
        """The report's data (a ``json`` report)."""
        return dict(orjson.loads(self.content))


class ServiceUnavailableError(ServingError, PccTransientError):
    """The service did not answer, or answered that it cannot serve right now (HTTP 502, 503, 504
    for any reason but a missing price): the same request may succeed later (``pcc`` exits 5)."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message if retry_after_s is None else f"{message} (retry after {retry_after_s} s)")
        self.retry_after_s = retry_after_s


def _retry_after(response: httpx.Response, detail: Mapping[str, Any]) -> int | None:
    value = detail.get("retry_after_s", response.headers.get("Retry-After"))
    try:
        return None if value is None else max(0, int(value))
    except (TypeError, ValueError):  # an HTTP date: the client does not wait for a date
        return None


#: errors the service names where one status covers several kinds
_NAMED: dict[tuple[int, str], Callable[[str], Exception]] = {
    (400, "MalformedRequestError"): MalformedRequestError,
    (403, "AccessDenied"): AccessDenied,
    (403, "NoProducerKey"): AccessDenied,
    (403, "NotSourceKeyError"): NotSourceKeyError,
    (409, "ProofMismatchError"): ProofMismatchError,
    (413, "RequestTooLargeError"): RequestTooLargeError,
    (503, "PriceUnavailableError"): PriceUnavailableError,  # wrong state: governance has to set the price
}
#: the kind of a status the service answers with, when the body names none of the above
_BY_STATUS: dict[int, Callable[[str], Exception]] = {
    400: InvalidQueryError,
    401: AuthenticationError,
    404: PccNotFoundError,
    408: QueryTimeoutError,
    409: ProducerUnavailableError,
    413: ResultTooLargeError,
    422: TamperedCiphertext,
}


def _detail(response: httpx.Response) -> dict[str, Any]:
    try:
        detail = response.json()
        if not isinstance(detail, dict):
            raise ValueError(detail)
    except ValueError:
        detail = {"message": response.text or response.reason_phrase}
    return detail


def raise_for(response: httpx.Response) -> None:
    """Turn an error response back into the serving error it came from.

    The service names its error (``{"error": "PriceUnavailableError", ...}``) where one
    status covers several kinds; the kind decides ``pcc``'s exit code (docs/cli.md).
    An answer that is not the service's own (a proxy's 502, 503 or 504) is transient.
    """
    status = response.status_code
    if status < 400:
        return
    detail = _detail(response)
    message = str(detail.get("message", response.reason_phrase))
    kind = _NAMED.get((status, str(detail.get("error"))), _BY_STATUS.get(status))
    if kind is not None:
        raise kind(message)
    if status == 402:
        raise PaymentRequiredError(message, detail.get("quote", {}))
    if status == 403:
        exc = ForbiddenQueryError(str(detail.get("rule", "?")), "")
        exc.message = message
        exc.args = (message,)
        raise exc
    if status == 429:
        retry_after = _retry_after(response, detail)
        raise TooManyRequestsError(message, 1 if retry_after is None else retry_after)
    if status in (502, 503, 504):
        raise ServiceUnavailableError(f"HTTP {status}: {message}", _retry_after(response, detail))
    raise ServingError(f"HTTP {status}: {message}")


class KeepAliveWire:
    """Requests over the standard library's ``http.client``, idle keep-alive connections reused.

    One connection per concurrent caller; about a fifth of ``httpx.Client``'s
    per-request cost (~70 µs against ~360 µs on loopback), which is a tenth of a
    one-vehicle query's time.  Answers come back as ``httpx.Response`` so the
    rest of the client (and :func:`raise_for`) reads them one way.  A request
    that finds its idle connection closed by the server (keep-alive timeout) is
    sent once more on a new connection: a signed request carries a nonce, so a
    repeat is refused by the service, never charged twice.
    """

    def __init__(self, base_url: str, timeout_s: float) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"service URL {base_url!r}: expected http:// or https://host[:port]")
        self._https = url.scheme == "https"
        self._host, self._port = url.host, url.port
        self._prefix = url.raw_path.decode("ascii").rstrip("/")
        self._timeout = timeout_s
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        target = self._prefix + path
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        for attempt in (0, 1):
            fresh = conn is None
            if conn is None:
                conn = self._connect()
            try:
                conn.request(method, target, body=body, headers=headers)
                reply = conn.getresponse()
                content = reply.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                conn = None
                if fresh or attempt:
                    raise httpx.RemoteProtocolError(str(exc), request=self._request(method, target)) from exc
                continue  # the server closed an idle connection: once more on a new one
            except TimeoutError as exc:
                conn.close()
                raise httpx.ReadTimeout(str(exc), request=self._request(method, target)) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise httpx.ConnectError(str(exc), request=self._request(method, target)) from exc
            if reply.will_close:
                conn.close()
            else:
                with self._lock:
                    self._idle.append(conn)
            # no httpx.Request attached: parsing the URL again would cost more than the rest of the answer
            return httpx.Response(reply.status, headers=reply.getheaders(), content=content)
        raise AssertionError("unreachable")  # pragma: no cover

    def _request(self, method: str, target: str) -> httpx.Request:
        scheme = "https" if self._https else "http"
        return httpx.Request(method, f"{scheme}://{self._host}:{self._port}{target}")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class PccClient:
    """Signed access to ``pcc serve``."""

    def __init__(
        self,
        base_url: str,
        private_key: str,
        timeout_s: float = 60.0,
        ttl_s: int = 60,
        grant_keys: ConsumerKeyPair | None = None,
        http: httpx.Client | None = None,
        domain: RequestDomain | None = None,
        chain_id: int | None = None,
    ) -> None:
        """``http``: an ``httpx.Client`` to send through instead (e.g. Starlette's ``TestClient``).

        ``domain``: sign for this EIP-712 domain and host instead of the one the service
        publishes; ``chain_id``: refuse to sign for a service whose domain names another chain.
        """
        self._signer = Signer(private_key)  # the key loaded once, not per request
        self._domain = domain
        self._chain_id = chain_id
        self.grant_keys = grant_keys
        self.account = self._signer.address
        self.base_url = base_url.rstrip("/")
        self._ttl = ttl_s
        self._http = http
        self._wire = KeepAliveWire(base_url, timeout_s) if http is None else None

    def _send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        try:
            if self._wire is not None:
                return self._wire.send(method, path, body, headers)
            assert self._http is not None
            return self._http.request(method, path, content=body, headers=headers)
        except httpx.TransportError as exc:  # refused, reset, timed out: nothing was answered
            raise ServiceUnavailableError(f"no answer from the service at {self.base_url}: {exc}") from exc

    def domain(self) -> RequestDomain:
        """The EIP-712 domain and host requests are signed for: read once from ``GET /v1/domain``."""
        if self._domain is None:
            response = self._send("GET", "/v1/domain", b"", {})
            raise_for(response)
            domain = RequestDomain.from_document(response.json())
            if self._chain_id is not None and domain.chain_id != self._chain_id:
                raise AuthenticationError(
                    f"the service at {self.base_url} signs for chain {domain.chain_id}, "
                    f"not {self._chain_id}: refusing to sign for another deployment"
                )
            self._domain = domain
        return self._domain

    def _signed(
        self, method: str, path: str, payload: dict[str, Any] | None = None, check: bool = True
    ) -> httpx.Response:
        body = orjson.dumps(payload) if payload is not None else b""
        headers = sign_request(self._signer, method, path, body, self._ttl, domain=self.domain())
        if payload is not None:
            headers["Content-Type"] = "application/json"
        response = self._send(method, path, body, headers)
        if check:
            raise_for(response)
        return response

    def _body(self, sql: str, format: str) -> dict[str, Any]:
        body: dict[str, Any] = {"sql": sql, "format": format}
        if self.grant_keys is not None:
            body["grant_key"] = self.grant_keys.public_key.hex()
        return body

    def query(self, sql: str, format: str = "arrow") -> ClientResult:
        """Run a paid query; raises the matching ServingError when refused."""
        response = self._signed("POST", "/v1/query", self._body(sql, format))
        price = int(response.headers.get("X-PCC-Price-Cents", "0"))
        keys = self.grant_keys
        if format == "arrow":
            table = pa.ipc.open_stream(response.content).read_all()
            wrapped = wrapped_in(table.schema.metadata)
            receipt = {"receipt_no": int(response.headers["X-PCC-Receipt"])}
            return ClientResult(table, receipt, price, wrapped, keys)
        if format == "csv":
            table = pacsv.read_csv(io.BytesIO(response.content)) if response.content.strip() else pa.table({})
            wrapped = decode_wrapped(response.headers.get("X-PCC-Wrapped-Keys"))
            receipt = {"receipt_no": int(response.headers["X-PCC-Receipt"])}
            return ClientResult(table, receipt, price, wrapped, keys)
        doc = response.json()
        table = pa.Table.from_pylist([dict(zip(doc["columns"], r, strict=True)) for r in doc["rows"]])
        if not doc["rows"]:
            table = pa.table({c: pa.array([], pa.null()) for c in doc["columns"]})
        wrapped = decode_wrapped(orjson.dumps(doc.get("wrapped_keys") or {}))
        return ClientResult(table, doc["receipt"], price, wrapped, keys)

    def query_raw(self, sql: str, format: str, check: bool = True) -> httpx.Response:
        """The signed query's HTTP answer as it came; ``check=False``: an error answer is returned, not raised."""
        return self._signed("POST", "/v1/query", self._body(sql, format), check)

    def owner(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """An owner endpoint (``owner/grants``, ``owner/revoke``, ``gdpr/export``, ``gdpr/erase``).

        The signing account must be one of the service's ``gdpr_operators``.
        """
        return dict(self._signed("POST", f"/v1/{action}", body).json())

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A signed JSON ``POST`` to ``path``; its JSON answer, or the refusal raised (e.g. the key
        service, ``pipelines.access.KeyClient(client.post, ...)``)."""
        return dict(self._signed("POST", path, dict(body)).json())

    def quote(self, sql: str) -> dict[str, Any]:
        return dict(self._signed("POST", "/v1/quote", {"sql": sql}).json())

    def receipts(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._signed("GET", f"/v1/receipts?limit={limit}").json()["receipts"])

    def catalog(self) -> dict[str, Any]:
        response = self._send("GET", "/v1/catalog", b"", {})
        raise_for(response)
        return dict(response.json())

    def proof(self, event_id: str) -> dict[str, Any]:
        """An event's inclusion proof and anchored checkpoint (check it with ``serving.proof.check_proof``)."""
        response = self._send("GET", f"/v1/proof/{quote(event_id, safe='')}", b"", {})
        raise_for(response)
        return dict(response.json())

    def passport(self, vehicle: str, format: str = "json") -> PassportReport:
        """Buy one passport report of ``vehicle`` (its pseudonym): ``json`` (data.json) or ``html`` (the page).

        Charged at governance's price per report; refused (402) before anything is read
        if the account cannot pay it.
        """
        if format not in ("json", "html"):
            raise PccValueError(f"format must be json or html, not {format!r}")
        path = f"/passport/{quote(vehicle, safe='')}" + ("/data.json" if format == "json" else "")
        response = self._signed("GET", path)
        return PassportReport(
            response.content,
            response.headers.get("content-type", ""),
            int(response.headers["X-PCC-Receipt"]),
            int(response.headers.get("X-PCC-Price-Cents", "0")),
        )

    def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
        if self._http is not None:
            self._http.close()

    def __enter__(self) -> PccClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
