"""A Python client for the serving API that signs every request with the consumer's key.

client = PccClient("http://127.0.0.1:8600", private_key)
client.quote("SELECT count(*) FROM vehicle_history")        # dict, price in cents
result = client.query("SELECT * FROM vehicle_history WHERE vehicle = 'v-…'")
result.rows, result.receipt                                   # or format="arrow" → result.table
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
from eth_account import Account

from serving.auth import sign_request
from serving.errors import (
    AuthenticationError,
    ForbiddenQueryError,
    InvalidQueryError,
    PaymentRequiredError,
    QueryTimeoutError,
    ResultTooLargeError,
    ServingError,
)


@dataclass
class ClientResult:
    """One paid query's answer."""

    table: pa.Table
    receipt: dict[str, Any] = field(default_factory=dict)
    price_cents: int = 0

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()


def raise_for(response: httpx.Response) -> None:
    """Turn an error response back into the serving error it came from."""
    if response.status_code < 400:
        return
    try:
        detail = response.json()
    except ValueError:
        detail = {"message": response.text}
    message = str(detail.get("message", response.reason_phrase))
    status = response.status_code
    if status == 400:
        raise InvalidQueryError(message)
    if status == 401:
        raise AuthenticationError(message)
    if status == 402:
        raise PaymentRequiredError(message, detail.get("quote", {}))
    if status == 403:
        exc = ForbiddenQueryError(str(detail.get("rule", "?")), "")
        exc.message = message
        exc.args = (message,)
        raise exc
    if status == 408:
        raise QueryTimeoutError(message)
    if status == 413:
        raise ResultTooLargeError(message)
    raise ServingError(f"HTTP {status}: {message}")


class PccClient:
    """Signed access to ``pcc serve``."""

    def __init__(self, base_url: str, private_key: str, timeout_s: float = 60.0, ttl_s: int = 60) -> None:
        self._key = private_key
        self.account = str(Account.from_key(private_key).address)
        self._ttl = ttl_s
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s)

    def _signed(self, method: str, path: str, payload: dict[str, Any] | None = None) -> httpx.Response:
        body = orjson.dumps(payload) if payload is not None else b""
        headers = sign_request(self._key, method, path, body, self._ttl)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        response = self._http.request(method, path, content=body, headers=headers)
        raise_for(response)
        return response

    def query(self, sql: str, format: str = "arrow") -> ClientResult:
        """Run a paid query; raises the matching ServingError when refused."""
        response = self._signed("POST", "/v1/query", {"sql": sql, "format": format})
        price = int(response.headers.get("X-PCC-Price-Cents", "0"))
        if format == "arrow":
            table = pa.ipc.open_stream(response.content).read_all()
            return ClientResult(table, {"receipt_no": int(response.headers["X-PCC-Receipt"])}, price)
        if format == "csv":
            table = pacsv.read_csv(io.BytesIO(response.content)) if response.content.strip() else pa.table({})
            return ClientResult(table, {"receipt_no": int(response.headers["X-PCC-Receipt"])}, price)
        doc = response.json()
        table = pa.Table.from_pylist([dict(zip(doc["columns"], r, strict=True)) for r in doc["rows"]])
        if not doc["rows"]:
            table = pa.table({c: pa.array([], pa.null()) for c in doc["columns"]})
        return ClientResult(table, doc["receipt"], price)

    def query_raw(self, sql: str, format: str) -> httpx.Response:
        return self._signed("POST", "/v1/query", {"sql": sql, "format": format})

    def quote(self, sql: str) -> dict[str, Any]:
        return dict(self._signed("POST", "/v1/quote", {"sql": sql}).json())

    def receipts(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._signed("GET", f"/v1/receipts?limit={limit}").json()["receipts"])

    def catalog(self) -> dict[str, Any]:
        response = self._http.get("/v1/catalog")
        raise_for(response)
        return dict(response.json())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PccClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
