"""The chat endpoint in FastAPI (``StreamingResponse``), mounted with ``add_middleware``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from streamhop.middleware import StreamHopMiddleware

from .common import MIDDLEWARE_OPTIONS, Dispatch, StreamArgs, sse_chunks


def build(with_middleware: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/chat")
    async def chat(request: Request) -> StreamingResponse:
        args = StreamArgs.from_query(request.query_params)
        return StreamingResponse(sse_chunks(args), media_type="text/event-stream")

    if with_middleware:
        app.add_middleware(StreamHopMiddleware, **MIDDLEWARE_OPTIONS)
    return app


app = Dispatch(build(True), build(False))
