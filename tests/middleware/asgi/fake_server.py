"""A fake ASGI server for one request, and helpers to drive the middleware with it.

:class:`Server` scripts ``receive`` and records every message ``send`` gets, the way uvicorn
behaves: after the response is complete, ``receive`` answers ``http.disconnect``. It shows what
a test may wait on (``listening``, ``said_disconnect``, ``sent``), so no test needs to sleep to
let something happen; :class:`SendProbe` shows when an app's ``send()`` is suspended.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamhop.middleware import SSEEvent, StreamHopMiddleware

from ..accumulate import client_events

FINAL: Message = {"type": "http.response.body", "body": b"", "more_body": False}
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"content-length", b"12345"),
    (b"x-app", b"kept"),
]


class Server:
    """One request's worth of a fake ASGI server.

    Args:
        requests: the ``http.request`` messages ``receive`` returns first.
        gate: when given, every body message waits for it before it is "written".
    """

    def __init__(
        self, requests: Sequence[Message] | None = None, gate: asyncio.Event | None = None
    ) -> None:
        if requests is None:
            requests = [{"type": "http.request", "body": b"", "more_body": False}]
        self.requests: deque[Message] = deque(requests)
        self.sent: list[Message] = []
        self.disconnect = asyncio.Event()
        self.gate = gate
        self.listening = False
        """True while a ``receive()`` waits for the disconnect."""
        self.said_disconnect = False
        """True once ``receive()`` has returned ``http.disconnect``."""

    async def receive(self) -> Message:
        if self.requests:
            return self.requests.popleft()
        self.listening = True
        await self.disconnect.wait()
        self.listening = False
        self.said_disconnect = True
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.gate is not None and message["type"] == "http.response.body":
            await self.gate.wait()
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.disconnect.set()  # as uvicorn: the response is complete

    @property
    def bodies(self) -> list[bytes]:
        """Body chunks of ``more_body`` messages, in order."""
        return [
            m["body"] for m in self.sent if m["type"] == "http.response.body" and m["more_body"]
        ]

    @property
    def events(self) -> list[SSEEvent]:
        """The SSE events a client decodes from the body."""
        return client_events(self.bodies)


def http_scope(
    method: str = "POST",
    path: str = "/stream",
    headers: Iterable[tuple[bytes, bytes]] = (),
    spec_version: str = "2.3",
) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def sse_start(headers: list[tuple[bytes, bytes]] | None = None) -> Message:
    return {"type": "http.response.start", "status": 200, "headers": list(headers or SSE_HEADERS)}


def body(data: bytes) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": True}


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def run(
    app: ASGIApp,
    server: Server,
    scope: Scope | None = None,
    timeout_s: float = 10.0,
    **options: Any,
) -> StreamHopMiddleware:
    mw = StreamHopMiddleware(app, **options)
    async with asyncio.timeout(timeout_s):
        await mw(scope or http_scope(), server.receive, server.send)
    return mw


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Return once ``predicate()`` is true; ``TimeoutError`` after ``timeout_s`` seconds."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.002)  # the next poll


class Suspended:
    """How many ``send()`` calls of an app are suspended, as counted by :class:`SendProbe`."""

    def __init__(self) -> None:
        self.count = 0


class SendProbe:
    """ASGI middleware mounted *inside* the middleware under test: counts the app's ``send()``
    calls suspended in the middleware's ``send`` (waiting for room, or for the server) in
    ``suspended``. A call that does not suspend never shows: no other task runs meanwhile."""

    def __init__(self, app: ASGIApp, suspended: Suspended) -> None:
        self.app = app
        self.suspended = suspended

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        suspended = self.suspended

        async def probed(message: Message) -> None:
            suspended.count += 1
            try:
                await send(message)
            finally:
                suspended.count -= 1

        await self.app(scope, receive, probed)


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
