"""Errors of the serving layer and their HTTP status, mapped in one place.

Every refusal names what was wrong; none of them is charged and none changes a
view.  :data:`HTTP_STATUS` is the only place where an error becomes a status code.
"""

from __future__ import annotations

from typing import Any

from pipelines.errors import (
    PccError,
    PccNotFoundError,
    PccPaymentRequiredError,
    PccPermissionError,
    PccStateError,
    PccTransientError,
    PccValueError,
)

#: every ServingError subclass that declares its own status, in definition order
_DECLARED: list[type[ServingError]] = []


class ServingError(PccError):
    """Root of the serving layer's errors (the passport's and the access service's included)."""

    status: int = 500

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "status" in cls.__dict__:
            _DECLARED.append(cls)
            if "HTTP_STATUS" in globals():  # defined after this module loaded (passport, access)
                HTTP_STATUS[cls] = cls.status

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


class PaymentRequiredError(ServingError, PccPaymentRequiredError):
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


class NotSourceKeyError(ServingError, PccPermissionError):
    """A well-signed request to the ingest bridge by an account that is not the source's registered
    key, or for a source that is not registered or is suspended."""

    status = 403


class UpstreamUnavailableError(ServingError, PccTransientError):
    """The Kafka broker or the chain node does not answer: nothing new is accepted until it does;
    what was acknowledged is kept and sent when it is back (retry after ``retry_after_s``)."""

    status = 503

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def detail(self) -> dict[str, Any]:
        return {**super().detail(), "retry_after_s": self.retry_after_s}


#: The one table from errors to HTTP statuses: every :class:`ServingError` subclass that declares a
#: ``status`` is entered here as it is defined (the passport's and the access service's too), then the
#: shared package's kinds of error; the first class along an error's MRO that is here decides.
HTTP_STATUS: dict[type[BaseException], int] = {cls: cls.status for cls in _DECLARED}
HTTP_STATUS.update(
    {PccValueError: 400, PccPermissionError: 403, PccNotFoundError: 404, PccTransientError: 503}
)


def http_status(exc: BaseException) -> int:
    """The HTTP status of an error (a refusal carrying its cause answers with the cause's; 500 if unmapped)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(exc, type(cause)):
        found = _lookup(cause)
        if found is not None:
            return found
    found = _lookup(exc)
    return 500 if found is None else found


def _lookup(exc: BaseException) -> int | None:
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return None
