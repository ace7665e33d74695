"""The chat endpoint in Litestar (``ServerSentEvent``, which encodes the events), mounted with
``middleware=[DefineMiddleware(StreamHopMiddleware, ...)]``."""

from __future__ import annotations

from litestar import Litestar, Request, get
from litestar.middleware import DefineMiddleware
from litestar.response import ServerSentEvent

from streamhop.middleware import StreamHopMiddleware

from .common import MIDDLEWARE_OPTIONS, Dispatch, StreamArgs, chat_payloads


@get("/chat")
async def chat(request: Request) -> ServerSentEvent:  # type: ignore[type-arg]
    return ServerSentEvent(chat_payloads(StreamArgs.from_query(request.query_params)))


def build(with_middleware: bool) -> Litestar:
    middleware = (
        [DefineMiddleware(StreamHopMiddleware, **MIDDLEWARE_OPTIONS)] if with_middleware else []
    )
    return Litestar(route_handlers=[chat], middleware=middleware)


app = Dispatch(build(True), build(False))
