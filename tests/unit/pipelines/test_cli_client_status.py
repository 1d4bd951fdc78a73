"""The serving client turns each HTTP answer back into an error whose kind gives pcc's exit code.

Every status the service answers with (and a service that does not answer) is
mapped as docs/cli.md's exit-code table says: a script retries on 5, pays on 8.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest

from pipelines.cli.main import exit_code
from pipelines.errors import PccError
from serving.client import PccClient, ServiceUnavailableError, raise_for

ROOT = Path(__file__).resolve().parents[3]
KEY = "0x" + "11" * 32


def _refusal(status: int, body: Mapping[str, object] | None = None, **headers: str) -> PccError:
    response = httpx.Response(
        status, json=dict(body) if body is not None else {"message": "refused"}, headers=headers
    )
    with pytest.raises(PccError) as caught:
        raise_for(response)
    return caught.value


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (400, "InvalidQueryError", 2),
        (400, "MalformedRequestError", 2),
        (401, "AuthenticationError", 4),
        (402, "PaymentRequiredError", 8),
        (403, "ForbiddenQueryError", 4),
        (403, "AccessDenied", 4),
        (404, "EventNotFoundError", 3),
        (408, "QueryTimeoutError", 1),
        (409, "ProducerUnavailableError", 6),
        (409, "ProofMismatchError", 6),
        (413, "ResultTooLargeError", 2),
        (413, "RequestTooLargeError", 2),
        (422, "TamperedCiphertext", 2),
        (429, "TooManyRequestsError", 5),
        (500, "ReceiptsInUseError", 1),
        (502, "SettlementError", 5),
        (503, "UpstreamUnavailableError", 5),
        (503, "ViewNotFoundError", 5),
        (503, "PriceUnavailableError", 6),
        (504, None, 5),
    ],
)
def test_each_answer_exits_with_its_kind(status: int, error: str | None, code: int):
    body = {"message": "refused"} if error is None else {"error": error, "message": "refused"}
    assert exit_code(_refusal(status, body)) == code


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_proxy_answer_that_is_not_json_is_transient(status: int):
    response = httpx.Response(status, text="<html>Service Unavailable</html>")
    with pytest.raises(ServiceUnavailableError) as caught:
        raise_for(response)
    assert exit_code(caught.value) == 5 and f"HTTP {status}" in str(caught.value)


def test_a_missing_price_is_wrong_state_not_retry_and_says_so():
    error = _refusal(
        503, {"error": "PriceUnavailableError", "message": "no price is set for data category 'fraud_score'"}
    )
    assert exit_code(error) == 6
    assert str(error) == "no price is set for data category 'fraud_score'"


def test_retry_after_is_kept_from_the_body_or_the_header():
    busy = _refusal(429, {"error": "TooManyRequestsError", "message": "slow down", "retry_after_s": 7})
    assert getattr(busy, "retry_after_s", None) == 7
    down = _refusal(503, {"message": "broker down"}, **{"Retry-After": "3"})
    assert isinstance(down, ServiceUnavailableError) and down.retry_after_s == 3
    assert "retry after 3 s" in str(down)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_service_that_does_not_answer_is_transient():
    url = f"http://127.0.0.1:{_closed_port()}"
    with PccClient(url, KEY, timeout_s=2) as client, pytest.raises(ServiceUnavailableError) as caught:
        client.catalog()
    assert exit_code(caught.value) == 5 and url in str(caught.value)
    assert isinstance(caught.value, OSError)  # callers catching OSError for "no service" still do


def test_the_docs_table_lists_the_statuses_where_the_client_puts_them():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| (\d+) \| (.*)$", text, flags=re.M))
    for status in ("429", "502", "503", "504"):
        assert status in rows["5"], status
    assert "409" in rows["6"] and "no price" in rows["6"]
    assert "402" in rows["8"] and "403" in rows["4"] and "404" in rows["3"] and "408" in rows["1"]
