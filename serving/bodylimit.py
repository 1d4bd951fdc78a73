"""Bodies over a limit are refused (413) before the rest of them is read: one ASGI helper for every app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.errors import RequestTooLargeError

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


def too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"the request body exceeds {limit} bytes")


def declared_too_large(headers: list[tuple[bytes, bytes]], limit: int) -> bool:
    """True if the request's ``Content-Length`` is over ``limit`` (or not a number)."""
    declared = next((v for k, v in headers if k == b"content-length"), None)
    return declared is not None and (not declared.isdigit() or int(declared) > limit)


def bounded(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises :class:`RequestTooLargeError` once the body passes ``limit`` bytes."""
    size = 0

    async def bounded_receive() -> MutableMapping[str, Any]:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise too_large(limit)
        return message

    return bounded_receive
