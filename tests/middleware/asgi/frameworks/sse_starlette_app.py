"""The chat endpoint with sse-starlette's ``EventSourceResponse`` (it encodes the events and
pings), in a Starlette app mounted with ``add_middleware``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from streamhop.middleware import StreamHopMiddleware

from .common import MIDDLEWARE_OPTIONS, Dispatch, StreamArgs, chat_payloads


async def chat(request: Request) -> EventSourceResponse:
    args = StreamArgs.from_query(request.query_params)

    async def events() -> AsyncIterator[dict[str, str]]:
        async for payload in chat_payloads(args):
            yield {"data": payload}

    return EventSourceResponse(events())


def build(with_middleware: bool) -> Starlette:
    app = Starlette(routes=[Route("/chat", chat)])
    if with_middleware:
        app.add_middleware(StreamHopMiddleware, **MIDDLEWARE_OPTIONS)
    return app


app = Dispatch(build(True), build(False))
