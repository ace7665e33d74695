"""What the framework apps of the matrix (``tests/middleware/asgi/test_frameworks.py``) share.

Each ``*_app`` module builds the same chat endpoint, ``GET /chat?id=&n=&pause_ms=``, in one
framework, mounted with :class:`~streamhop.middleware.StreamHopMiddleware` the way that
framework's users mount ASGI middleware, and exposes ``app``: a :class:`Dispatch` that serves it
with the middleware and, for requests carrying ``x-test-plain: 1``, the same endpoint without it.

The endpoint streams an OpenAI chat completion (role, ``n`` one-token deltas ``pause_ms`` apart,
finish, ``[DONE]``). Its generator leaves its state in ``$STREAMHOP_TEST_STATE_DIR/<id>.json``
when its ``finally`` runs: ``time.monotonic()`` then (one clock for every process on Linux),
how many deltas it had produced, and how it ended. The tests poll for that file.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from starlette.types import ASGIApp, Receive, Scope, Send

STATE_DIR_ENV: Final = "STREAMHOP_TEST_STATE_DIR"
PLAIN_HEADER: Final = b"x-test-plain"
MIDDLEWARE_OPTIONS: Final[dict[str, Any]] = {
    "flush_interval_ms": 50.0,
    # Far beyond the tests' bound: a handler that stops in time stopped because it heard the
    # disconnect, not because the middleware's last resort cancelled it.
    "stop_grace_s": 30.0,
}
TOKENS: Final = ("Hé", "llo", ",", " 東京", " 👩‍💻", " café", " 🇫🇷", " ok", ".", " Ω")


@dataclass(frozen=True)
class StreamArgs:
    """One request's stream: id (names the state file), deltas, and the pause between them."""

    rid: str
    n: int
    pause_s: float

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> StreamArgs:
        return cls(
            rid=str(query["id"]),
            n=int(query.get("n", "100")),
            pause_s=float(query.get("pause_ms", "2")) / 1000.0,
        )


def expected_text(n: int) -> str:
    """The text of a stream of ``n`` deltas."""
    return "".join(TOKENS[i % len(TOKENS)] for i in range(n))


def _chunk(rid: str, delta: dict[str, str], finish: str | None = None) -> str:
    return json.dumps(
        {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "sim-1",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        },
        ensure_ascii=False,
    )


async def chat_payloads(args: StreamArgs) -> AsyncIterator[str]:
    """The ``data`` of each event of the stream; records the state file in ``finally``."""
    produced = 0
    ended = "completed"
    try:
        yield _chunk(args.rid, {"role": "assistant", "content": ""})
        for i in range(args.n):
            yield _chunk(args.rid, {"content": TOKENS[i % len(TOKENS)]})
            produced += 1
            await asyncio.sleep(args.pause_s)  # the provider's next token
        yield _chunk(args.rid, {}, finish="stop")
        yield "[DONE]"
    except BaseException as exc:
        ended = type(exc).__name__
        raise
    finally:
        _record(args.rid, {"finally_at": time.monotonic(), "produced": produced, "ended": ended})


async def sse_chunks(args: StreamArgs) -> AsyncIterator[bytes]:
    """The stream as SSE body chunks, one event each."""
    async for payload in chat_payloads(args):
        yield b"data: " + payload.encode() + b"\n\n"


def _record(rid: str, state: dict[str, Any]) -> None:
    directory = os.environ.get(STATE_DIR_ENV)
    if not directory:
        return
    path = Path(directory) / f"{rid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)  # the test never sees half a file


class Dispatch:
    """One server, the framework's app twice: ``wrapped`` (with the middleware) by default,
    ``plain`` for requests with ``x-test-plain: 1``. ``GET /_ready`` answers 204 (the modules
    are imported by then); lifespan goes to ``wrapped``."""

    def __init__(self, wrapped: ASGIApp, plain: ASGIApp) -> None:
        self.wrapped = wrapped
        self.plain = plain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/_ready":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        plain = scope["type"] == "http" and (PLAIN_HEADER, b"1") in scope["headers"]
        await (self.plain if plain else self.wrapped)(scope, receive, send)
