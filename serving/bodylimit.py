"""Bodies over a limit are refused (413) before the rest of them is read: one ASGI helper for every app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from serving.errors import RequestTooLargeError, ServingError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


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


class BodyLimitedApp(FastAPI):
    """FastAPI refusing a body over ``max_body_bytes`` (413) before reading the rest of it.

    A subclass sets ``max_body_bytes`` and answers the refusal as its other errors (:meth:`refusal`).
    """

    max_body_bytes = 64 * 1024

    def refusal(self, exc: ServingError) -> Response:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        limit = self.max_body_bytes
        if declared_too_large(scope["headers"], limit):
            await self.refusal(too_large(limit))(scope, receive, send)
            return
        await super().__call__(scope, bounded(receive, limit), send)
