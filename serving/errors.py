"""Errors of the serving layer and their HTTP status, mapped in one place.

Every refusal names what was wrong; none of them is charged and none changes a
view.  :data:`HTTP_STATUS` is the only place where an error becomes a status code.
"""

from __future__ import annotations

from typing import Any

from pipelines.errors import (
    PccError,
    PccNotFoundError,
    PccPermissionError,
    PccStateError,
    PccTransientError,
    PccValueError,
)


class ServingError(PccError):
    """Root of the serving layer's errors."""

    status: int = 500

    def detail(self) -> dict[str, Any]:
        return {"error": type(self).__name__, "message": self.message}


class InvalidQueryError(ServingError, PccValueError):
    """The SQL does not parse or does not bind; carries DuckDB's own message."""

    status = 400


class ForbiddenQueryError(ServingError, PccPermissionError):
    """The SQL is valid but breaks a sandbox rule; ``rule`` names it."""

    status = 403

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"forbidden by rule '{rule}': {message}")
        self.rule = rule

    def detail(self) -> dict[str, Any]:
        return {**super().detail(), "rule": self.rule}


class AuthenticationError(ServingError, PccPermissionError):
    """The request is not signed, badly signed, expired or replayed."""

    status = 401


class PaymentRequiredError(ServingError, PccPermissionError):
    """The consumer's funds do not cover the query; carries the quote."""

    status = 402

    def __init__(self, message: str, quote: dict[str, Any]) -> None:
        super().__init__(message)
        self.quote = quote

    def detail(self) -> dict[str, Any]:
        return {**super().detail(), "quote": self.quote}


class TooManyRequestsError(ServingError, PccTransientError):
    """The consumer sends faster than its rate, or has too many queries in flight; retry after a while."""

    status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def detail(self) -> dict[str, Any]:
        return {**super().detail(), "retry_after_s": self.retry_after_s}


class RequestTooLargeError(ServingError, PccValueError):
    """The request body is larger than the service accepts (checked before anything is parsed)."""

    status = 413


class QueryTimeoutError(ServingError, PccTransientError):
    """The query ran longer than the time limit."""

    status = 408
    transient = False


class ResultTooLargeError(ServingError, PccValueError):
    """The query returns more rows than the row limit."""

    status = 413


class PriceUnavailableError(ServingError, PccStateError):
    """Governance has not set a price for a category the query needs."""

    status = 503


class ProducerUnavailableError(ServingError, PccStateError):
    """A producer whose rows the answer uses is not registered or is suspended on the chain:
    its rows cannot be sold (the Marketplace would not settle the receipt)."""

    status = 409


class ViewNotFoundError(ServingError, PccNotFoundError):
    """A batch version or view named in the manifest is missing."""

    status = 503


class SettlementError(ServingError, PccTransientError):
    """Receipts could not be settled on the Marketplace; they stay pending."""

    status = 502


class ReceiptsInUseError(ServingError, PccStateError):
    """Another serving process writes this data directory's receipts (one service per data dir)."""

    status = 500


class EventNotFoundError(ServingError, PccNotFoundError):
    """No event with that id is in the serving views."""

    status = 404


class MalformedRequestError(ServingError, PccValueError):
    """A request body that is not the JSON object the endpoint takes."""

    status = 400


class ProofMismatchError(ServingError, PccStateError):
    """An event's proof does not match what the chain anchors (``pcc verify``)."""

    status = 409


HTTP_STATUS: dict[type[ServingError], int] = {
    cls: cls.status
    for cls in (
        InvalidQueryError,
        ForbiddenQueryError,
        AuthenticationError,
        PaymentRequiredError,
        TooManyRequestsError,
        RequestTooLargeError,
        QueryTimeoutError,
        ResultTooLargeError,
        PriceUnavailableError,
        ProducerUnavailableError,
        ViewNotFoundError,
        SettlementError,
        EventNotFoundError,
        MalformedRequestError,
        ProofMismatchError,
    )
}


def http_status(exc: ServingError) -> int:
    """The HTTP status of a serving error (500 for anything unmapped)."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]  # type: ignore[index]
    return 500
