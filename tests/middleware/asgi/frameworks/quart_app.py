"""The chat endpoint in Quart (an async generator as the response body), with the middleware
around ``app.asgi_app``, Quart's place for ASGI middleware.

Quart runs the view in a child task that it cancels itself when ``receive()`` says
``http.disconnect``.
"""

from __future__ import annotations

from quart import Quart, Response, request

from streamhop.middleware import StreamHopMiddleware

from .common import MIDDLEWARE_OPTIONS, Dispatch, StreamArgs, sse_chunks


def build(with_middleware: bool) -> Quart:
    app = Quart(__name__)

    @app.get("/chat")
    async def chat() -> Response:
        args = StreamArgs.from_query(request.args)
        response = Response(sse_chunks(args), mimetype="text/event-stream")
        response.timeout = None  # Quart's RESPONSE_TIMEOUT would end a long stream
        return response

    if with_middleware:
        app.asgi_app = StreamHopMiddleware(app.asgi_app, **MIDDLEWARE_OPTIONS)  # type: ignore[method-assign]
    return app


app = Dispatch(build(True), build(False))
