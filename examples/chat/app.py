"""The chat example's FastAPI app: a page, and ``POST /api/chat`` streamed through streamhop.

``POST /api/chat`` takes ``{"messages": [{"role", "content"}, ...], "max_tokens": N?}``, calls
the provider with the official ``openai`` SDK (``AsyncOpenAI``, streaming) and relays the SDK's
chunks as OpenAI ``chat.completion.chunk`` SSE events, ended by ``data: [DONE]``. Because the
events keep the provider's format, :class:`~streamhop.middleware.StreamHopMiddleware` merges
their text deltas (a format of its own would only be batched, see ``docs/rechunking.md``).

When the browser goes away (the page's Stop button aborts the fetch), the middleware cancels the
handler; leaving ``async with stream`` closes the SDK's HTTP response, so the provider sees its
connection close at once.

Configuration, from the environment (read when the app starts):

* ``OPENAI_BASE_URL``: the provider (the SDK's own variable). Nothing is started here:
  ``python -m examples.chat`` starts ``streamhop simulate`` and points this at it.
* ``OPENAI_API_KEY``: the provider's key (any value for the simulator).
* ``OPENAI_MODEL``: the model name (default ``streamhop-sim-1``).
* ``STREAMHOP_FLUSH_INTERVAL_MS``: the middleware's merge window (default 20).

``GET /metrics`` serves the middleware's Prometheus metrics.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import openai
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from prometheus_client import CollectorRegistry, make_asgi_app
from pydantic import BaseModel, Field
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from streamhop.middleware import StreamHopMiddleware

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_MODEL = "streamhop-sim-1"


class ChatMessage(BaseModel):
    """One turn of the conversation."""

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """The body of ``POST /api/chat``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=100_000)


def create_app(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    flush_interval_ms: float | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the app; arguments left ``None`` come from the environment (see the module doc).

    Args:
        base_url: the provider's OpenAI-compatible base URL (``.../v1``).
        api_key: the provider's API key.
        model: the model to ask.
        flush_interval_ms: the middleware's merge window, in milliseconds.
        registry: where the middleware records its metrics (default: a new registry, served
            at ``/metrics``).
    """
    model_name = model or os.environ.get("OPENAI_MODEL") or DEFAULT_MODEL
    registry = registry if registry is not None else CollectorRegistry()
    if flush_interval_ms is None:
        flush_interval_ms = float(os.environ.get("STREAMHOP_FLUSH_INTERVAL_MS", "20"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = AsyncOpenAI(
            base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "unused-by-the-simulator",
            max_retries=0,
        )
        app.state.openai = client
        try:
            yield
        finally:
            await client.close()

    app = FastAPI(title="streamhop chat example", lifespan=lifespan)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.post("/api/chat", response_model=None)
    async def chat(payload: ChatRequest, request: Request) -> Response:
        client: AsyncOpenAI = request.app.state.openai
        # Pass a caller's request id on to the provider, so both logs name the same stream.
        request_id = request.headers.get("x-request-id")
        try:
            stream = await client.chat.completions.create(
                model=model_name,
                messages=[_message(m) for m in payload.messages],
                stream=True,
                max_tokens=payload.max_tokens if payload.max_tokens is not None else openai.omit,
                extra_headers={"x-request-id": request_id} if request_id else None,
            )
        except openai.APIStatusError as exc:
            return _error(502, "provider_error", f"the provider answered {exc.status_code}")
        except openai.APIConnectionError:
            return _error(502, "provider_unreachable", "the provider could not be reached")
        return _ProviderStream(stream)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/metrics", make_asgi_app(registry=registry))
    app.add_middleware(StreamHopMiddleware, flush_interval_ms=flush_interval_ms, registry=registry)
    return app


class _ProviderStream(StreamingResponse):
    """The relay's response, which closes the provider's stream however the response ends.

    ``async with stream`` in :func:`_relay` closes it when the generator ends or is cancelled at
    one of its own awaits; but when the client leaves while Starlette is inside ``send()``, the
    exception leaves the generator suspended at its ``yield``, and only its finalization (the
    garbage collector's, when a traceback cycle holds it) would close the provider connection.
    Closing here, in ``finally``, makes the provider see the close at once in every case.
    """

    def __init__(self, stream: AsyncStream[ChatCompletionChunk]) -> None:
        super().__init__(_relay(stream), media_type="text/event-stream")
        self._provider = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._provider.close()


async def _relay(stream: AsyncStream[ChatCompletionChunk]) -> AsyncIterator[str]:
    """The SDK's chunks as SSE events, exactly the fields the provider sent."""
    async with stream:  # leaving it (end, error, cancellation) closes the provider connection
        async for chunk in stream:
            yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
    yield "data: [DONE]\n\n"


def _message(message: ChatMessage) -> ChatCompletionMessageParam:
    # The SDK's TypedDicts, one per role.
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "assistant":
        return {"role": "assistant", "content": message.content}
    return {"role": "user", "content": message.content}


def _error(status: int, code: str, message: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "server_error", "code": code, "param": None}}
    return JSONResponse(body, status_code=status)


app = create_app()
"""For ``uvicorn examples.chat.app:app`` against a provider of your own (see the module doc)."""
