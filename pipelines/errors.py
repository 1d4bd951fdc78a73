"""The one error hierarchy of the platform.

Every error carries a user-facing message and says whether it is *transient*
(retry later: a broker or an RPC node is down) or *terminal* (the input itself
is wrong: a bad hash, a bad schema).  Subclasses also inherit the builtin they
resemble so callers can catch either.  Messages name identifiers (event id,
topic[partition]@offset, block number, tx hash), never a VIN or a person.

The kind of an error decides the exit code of ``pcc`` (docs/cli.md); the table
that maps kinds to codes is ``pipelines.cli.main.EXIT_CODES``, and only there.
"""

from __future__ import annotations


class PccError(Exception):
    """Root of every error PCC raises on purpose."""

    transient: bool = False
    #: the exit code of an error of no kind in pipelines.cli.main.EXIT_CODES (a layer's own, e.g. 7)
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PccValueError(PccError, ValueError):
    """Input that can never be accepted as it is (terminal)."""


class PccValidationError(PccValueError):
    """An event or document failed validation; ``problems`` lists every one."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            message = message + ": " + "; ".join(self.problems)
        super().__init__(message)


class PccConfigError(PccValueError):
    """A setting is missing or wrong; the message names the file and the key."""


class PccNotFoundError(PccError, LookupError):
    """Something named does not exist (an unknown source, pseudonym, run)."""


class PccPermissionError(PccError, PermissionError):
    """The caller may not do this (no role, no grant, revoked grant)."""


class PccPaymentRequiredError(PccPermissionError):
    """The caller may do this but cannot pay for it (funds, allowance, gas): unlike a refusal,
    paying first makes the same call succeed."""


class PccTransientError(PccError, ConnectionError):
    """A dependency is unavailable right now; the same call may succeed later."""

    transient = True


class PccStateError(PccError, RuntimeError):
    """A component is in the wrong state for the request (already running, stale PID)."""
