"""The chat endpoint in Starlette (``StreamingResponse``), mounted with ``middleware=[...]``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from streamhop.middleware import StreamHopMiddleware

from .common import MIDDLEWARE_OPTIONS, Dispatch, StreamArgs, sse_chunks


async def chat(request: Request) -> StreamingResponse:
    args = StreamArgs.from_query(request.query_params)
    return StreamingResponse(sse_chunks(args), media_type="text/event-stream")


def build(with_middleware: bool) -> Starlette:
    middleware = [Middleware(StreamHopMiddleware, **MIDDLEWARE_OPTIONS)] if with_middleware else []
    return Starlette(routes=[Route("/chat", chat)], middleware=middleware)


app = Dispatch(build(True), build(False))
