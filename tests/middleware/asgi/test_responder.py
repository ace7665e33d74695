"""The responder's phases: what a request goes through, seen from inside the app.

The app reads :attr:`Responder.phase` as it goes; the fake server of :mod:`.fake_server`
plays the client. Each test waits on state it can see, never on time.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamhop.middleware import encode_events
from streamhop.middleware.asgi.options import MiddlewareOptions
from streamhop.middleware.asgi.phase import STOPPED, Phase
from streamhop.middleware.asgi.record import families
from streamhop.middleware.asgi.responder import Responder
from streamhop.middleware.controls import NO_CONTROLS

from ..accumulate import chat_chunk
from .fake_server import FINAL, Server, body, http_scope, read_body, sse_start, wait_until

JSON_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
}
CHUNK = encode_events([chat_chunk({"content": "Hi"})])


def responder(app: ASGIApp, server: Server, **options: object) -> Responder:
    """A responder for one request of ``server``, with a registry of its own."""
    opts = MiddlewareOptions(**options)  # type: ignore[arg-type]
    return Responder(
        app,
        opts,
        families(CollectorRegistry()),
        opts.pump_options(NO_CONTROLS),
        http_scope(),
        server.receive,
        server.send,
    )


class Phases:
    """An app's view of its responder's phase: ``seen`` in order, ``now()`` at any time."""

    def __init__(self) -> None:
        self.responder: Responder | None = None
        self.seen: list[Phase] = []

    def now(self) -> Phase:
        assert self.responder is not None
        return self.responder.phase

    def note(self) -> None:
        self.seen.append(self.now())


async def test_an_sse_response_goes_starting_streaming_complete() -> None:
    phases = Phases()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        phases.note()
        await send(sse_start())
        phases.note()
        await send(body(CHUNK))
        phases.note()
        await send(dict(FINAL))
        phases.note()

    server = Server()
    phases.responder = r = responder(app, server)
    assert r.phase is Phase.STARTING
    await r.run()
    assert phases.seen == [Phase.STARTING, Phase.STREAMING, Phase.STREAMING, Phase.COMPLETE]
    assert r.phase is Phase.COMPLETE
    assert server.sent[-1] == FINAL


async def test_a_response_passed_through_goes_passing_complete() -> None:
    phases = Phases()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(JSON_START)
        phases.note()
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})
        phases.note()

    server = Server()
    phases.responder = r = responder(app, server)
    await r.run()
    assert phases.seen == [Phase.PASSING, Phase.COMPLETE]


async def test_an_sse_app_that_returns_without_its_final_body_is_left_ending() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        await send(body(CHUNK))

    server = Server()
    r = responder(app, server)
    await r.run()
    assert r.phase is Phase.ENDING  # what was held went out; the response is unfinished
    assert server.sent[-1]["more_body"] is True


async def test_a_disconnect_mid_stream_tells_the_app() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        await send(body(CHUNK))
        await asyncio.Event().wait()  # its upstream: cancelled here

    server = Server()
    r = responder(app, server)
    task = asyncio.create_task(r.run())
    await wait_until(lambda: len(server.bodies) == 1)
    server.disconnect.set()
    async with asyncio.timeout(5):
        await task
    assert r.phase is Phase.TOLD


class HeldServer(Server):
    """A server whose body writes wait for ``release`` (a socket that does not drain)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.holding = 0

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            self.holding += 1
            await self.release.wait()
            self.holding -= 1
        await super().send(message)


async def test_a_stop_waits_in_stopping_while_the_app_is_inside_send() -> None:
    """The client leaves while the app is inside ``send()`` (passed through to a server that
    does not drain): the app is told only once that ``send()`` returns."""
    heard: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send({**JSON_START, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"text", "more_body": True})
        heard.append((await receive())["type"])

    server = HeldServer()
    r = responder(app, server, stop_grace_s=60.0)
    task = asyncio.create_task(r.run())
    await wait_until(lambda: server.holding == 1)
    assert r.phase is Phase.PASSING
    server.disconnect.set()
    await wait_until(lambda: server.said_disconnect)
    assert r.phase is Phase.STOPPING
    assert "stopping" in repr(r)
    server.release.set()
    async with asyncio.timeout(5):
        await task
    assert r.phase is Phase.TOLD
    assert heard == ["http.disconnect"]


async def test_a_disconnect_after_the_response_is_not_a_stop() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send(JSON_START)
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})
        assert (await receive())["type"] == "http.disconnect"  # the end of the exchange

    server = Server()
    r = responder(app, server)
    await r.run()
    assert r.phase is Phase.COMPLETE
    assert r.phase not in STOPPED
