"""A subscriber's side of the alert service: signed requests, and the grant proof (``pcc alerts``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from pipelines.access.wrap import ConsumerKeyPair
from pipelines.errors import (
    PccError,
    PccNotFoundError,
    PccPermissionError,
    PccTransientError,
    PccValueError,
)
from serving.alerts.grants import grant_proof
from serving.auth import RequestDomain, sign_request
from serving.eip191 import Signer


def raise_for(response: httpx.Response) -> None:
    """An error answer as the error of its kind (the CLI's exit code follows: docs/cli.md)."""
    status = response.status_code
    if status < 400:
        return
    try:
        message = str(response.json().get("message", response.reason_phrase))
    except ValueError:
        message = response.text[:300] or response.reason_phrase
    message = f"HTTP {status}: {message}"
    if status in (400, 413, 422):
        raise PccValueError(message)
    if status in (401, 403):
        raise PccPermissionError(message)
    if status == 404:
        raise PccNotFoundError(message)
    if status == 429 or status >= 500:
        raise PccTransientError(message)
    raise PccError(message)


class AlertsClient:
    """Signed calls to one alert service as the account of ``key``."""

    def __init__(self, base_url: str, key: str, *, timeout_s: float = 10.0) -> None:
        self.base = base_url.rstrip("/")
        self._signer = Signer(key)
        self.account = self._signer.address
        self._http = httpx.Client(base_url=self.base, timeout=timeout_s, trust_env=False)
        self._domain: RequestDomain | None = None

    def _get_json(self, path: str) -> Any:
        try:
            response = self._http.get(path)
        except httpx.HTTPError as exc:
            raise PccTransientError(f"the alert service at {self.base} does not answer ({exc})") from None
        raise_for(response)
        return response.json()

    @property
    def domain(self) -> RequestDomain:
        if self._domain is None:
            self._domain = RequestDomain.from_document(self._get_json("/v1/domain"))
        return self._domain

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = b"" if body is None else orjson.dumps(body)
        headers = sign_request(self._signer, method, path, data, domain=self.domain)
        if body is not None:
            headers["content-type"] = "application/json"
        try:
            response = self._http.request(method, path, content=data, headers=headers)
        except httpx.HTTPError as exc:
            raise PccTransientError(f"the alert service at {self.base} does not answer ({exc})") from None
        raise_for(response)
        return response.json()

    def subscribe(
        self,
        url: str,
        kinds: Sequence[str],
        vehicles: Sequence[str] | None,
        grant_keys: ConsumerKeyPair | None,
        secret: str | None = None,
    ) -> dict[str, Any]:
        """``vehicles`` None: fleet-wide (public kinds only, no grant key)."""
        body: dict[str, Any] = {"url": url, "kinds": list(kinds)}
        if vehicles is not None:
            if grant_keys is None:
                raise ValueError("a vehicle list needs the consumer key its grants name")
            service_key = self._get_json("/v1/alerts/key")["key"]
            body["vehicles"] = list(vehicles)
            body["grant_key"] = grant_keys.public_key.hex()
            body["grant_proof"] = grant_proof(grant_keys, service_key, self.account)
        if secret is not None:
            body["secret"] = secret
        result: dict[str, Any] = self.call("POST", "/v1/subscriptions", body)
        return result

    def subscriptions(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/v1/subscriptions")["subscriptions"])

    def deliveries(self, sub_id: str, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = f"?limit={limit}" + (f"&status={status}" if status else "")
        return list(self.call("GET", f"/v1/subscriptions/{sub_id}/deliveries{query}")["deliveries"])

    def redeliver(self, sub_id: str, alert_ids: Sequence[str] | None = None) -> list[str]:
        body = {"alert_ids": list(alert_ids)} if alert_ids else {}
        return list(self.call("POST", f"/v1/subscriptions/{sub_id}/redeliver", body)["requeued"])

    def unsubscribe(self, sub_id: str) -> None:
        self.call("DELETE", f"/v1/subscriptions/{sub_id}")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AlertsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
