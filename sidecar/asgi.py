"""ASGI types (scope, messages, receive, send) and the small answers both edges send themselves:
JSON errors in the provider's shape, the request body under a limit, disconnect watching."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from streamhop.middleware.rechunk.formats import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def json_error(
    send: Send,
    status: int,
    fmt: str | None,
    code: str,
    message: str,
    *,
    retry_after: bool = False,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with a JSON error body in the provider's shape (see ``error_body``);
    ``extra_headers`` (``Allow`` for a 405) are added to the response."""
    body = error_body(fmt, code, message, status)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    ]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def read_body(receive: Receive, limit: int, timeout_s: float) -> bytes | int | None:
    """The whole request body; ``None`` if the client disconnected, ``limit`` (an int) if the
    body is larger than ``limit`` bytes.

    Raises:
        TimeoutError: ``timeout_s`` seconds passed between two reads of the body.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        async with asyncio.timeout(timeout_s):
            message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return limit
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client disconnects (ASGI ``http.disconnect``)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def client_left_first(receive: Receive, work: asyncio.Future[Any]) -> bool:
    """Wait until ``work`` is done or the client disconnects, whichever comes first; True when
    the client left first (``work`` still runs: the caller decides whether to cancel it or
    let it run on). The disconnect watcher never outlives this call.

    Raises:
        asyncio.CancelledError: this task was cancelled (``work`` is left to the caller).
    """
    watcher = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
        return not work.done()
    finally:
        watcher.cancel()


def with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """``send`` that adds ``extra`` to the response's headers (the CORS headers of an allowed
    origin). Only requests that need it pay for the extra call per message."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return wrapped
