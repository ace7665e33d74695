"""The simulator's aiohttp application: routes, request handling and error bodies.

Routes (``make_app``):

- ``POST /v1/chat/completions``, ``POST /v1/responses``, ``POST /v1/messages``: generate, streaming
  when the body says ``"stream": true``. With ``replay`` set, every POST to any path replays the
  recording instead (with ``timing``: read by read at the recorded times, with the recorded
  status, :mod:`.timing`).
- ``GET /v1/models``: a small OpenAI-shaped model list.
- ``GET /_simulator/streams`` / ``DELETE /_simulator/streams``: the stream log (:mod:`.streams`).
- Anything else: 404 with an OpenAI-shaped error body.

Errors use the endpoint's own shape: OpenAI's ``{"error": {"message", "type", "param", "code"}}``
(https://platform.openai.com/docs/guides/error-codes) and Anthropic's
``{"type": "error", "error": {"type", "message"}}`` (https://docs.anthropic.com/en/api/errors).
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from streamhop.sidecar.simulate import anthropic, openai_chat, openai_responses
from streamhop.sidecar.simulate.config import SimulatorConfig
from streamhop.sidecar.simulate.errors import (
    BadRequestError,
    ClientClosedError,
    SimulatorConfigError,
)
from streamhop.sidecar.simulate.pacing import connection_closed, sleep_until
from streamhop.sidecar.simulate.recording import load_replay
from streamhop.sidecar.simulate.request import Generation, SimRequest, parse_request
from streamhop.sidecar.simulate.response import answer_delay_s, pump, replay_timed
from streamhop.sidecar.simulate.streams import StreamLog
from streamhop.sidecar.simulate.timing import TimedReplay, load_timed_replay
from streamhop.sidecar.simulate.tools import ToolSpec

MODELS = ("streamhop-sim-1", "streamhop-sim-mini")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One generating route and how its wire format reads a request.

    Attributes:
        path: route path.
        limit_keys: body fields naming the output limit, first found wins.
        find_tool: picks the tool to call out of the body.
        make: builds the answer.
        anthropic_errors: errors use Anthropic's shape rather than OpenAI's.
    """

    path: str
    limit_keys: tuple[str, ...]
    find_tool: Callable[[Mapping[str, Any]], ToolSpec | None]
    make: Callable[[SimRequest], Generation]
    anthropic_errors: bool = False


ENDPOINTS = (
    Endpoint(
        openai_chat.PATH, openai_chat.LIMIT_KEYS, openai_chat.find_tool, openai_chat.ChatCompletion
    ),
    Endpoint(
        openai_responses.PATH,
        openai_responses.LIMIT_KEYS,
        openai_responses.find_tool,
        openai_responses.Response,
    ),
    Endpoint(anthropic.PATH, anthropic.LIMIT_KEYS, anthropic.find_tool, anthropic.Message, True),
)


@dataclass(frozen=True, slots=True)
class SimulatorState:
    """Per-application state, stored under :data:`STATE_KEY`.

    Attributes:
        config: the configuration the app was made with.
        streams: the stream log.
        replay_events: the recording's events when ``config.replay`` is set.
        timed: the recording cut into timed reads when ``config.timing`` is set too.
    """

    config: SimulatorConfig
    streams: StreamLog
    replay_events: tuple[bytes, ...] | None
    timed: TimedReplay | None = None


STATE_KEY = web.AppKey("streamhop_simulator", SimulatorState)


def make_app(config: SimulatorConfig) -> web.Application:
    """Build the simulator application.

    Args:
        config: pacing, text and replay settings.

    Returns:
        An aiohttp application; run it with ``web.AppRunner`` (``handler_cancellation=True`` makes
        client disconnects visible at once rather than within 10 ms) or ``aiohttp_client``.

    Raises:
        OSError: ``config.replay`` names a file that cannot be read.
        SimulatorConfigError: ``config.timing`` is not the timeline of ``config.replay``.
    """
    replay = config.replay
    state = SimulatorState(
        config=config,
        streams=StreamLog(),
        replay_events=load_replay(replay) if replay is not None else None,
        timed=None
        if replay is None or config.timing is None
        else load_timed_replay(replay, config.timing),
    )
    app = web.Application()
    app[STATE_KEY] = state
    handlers = _Handlers(state)
    router = app.router
    router.add_get("/v1/models", handlers.models)
    router.add_get("/_simulator/streams", handlers.list_streams)
    router.add_delete("/_simulator/streams", handlers.clear_streams)
    if state.replay_events is not None:
        router.add_post("/{tail:.*}", handlers.replay)
    else:
        for endpoint in ENDPOINTS:
            router.add_post(endpoint.path, handlers.generator(endpoint))
    router.add_route("*", "/{tail:.*}", handlers.not_found)
    return app


def json_response(
    payload: Any, *, status: int = 200, request_id: str | None = None
) -> web.Response:
    """Return ``payload`` serialized by orjson as an ``application/json`` response."""
    headers = {"x-request-id": request_id} if request_id else None
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type="application/json", headers=headers
    )


def error_response(
    status: int, message: str, *, anthropic_shape: bool = False, param: str | None = None
) -> web.Response:
    """Return an error in OpenAI's shape, or Anthropic's when ``anthropic_shape``."""
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    if anthropic_shape:
        return json_response(
            {"type": "error", "error": {"type": kind, "message": message}}, status=status
        )
    body = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return json_response({"error": body}, status=status)


class _Handlers:
    """Request handlers bound to one application's state."""

    def __init__(self, state: SimulatorState) -> None:
        self._state = state

    def generator(self, endpoint: Endpoint) -> Callable[[web.Request], Any]:
        """Return the handler of one generating endpoint."""

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._generate(request, endpoint)

        return handle

    async def _generate(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        arrival, started, request_id = _arrival(request)
        try:
            config = self._state.config.with_overrides(request.headers)
            body = orjson.loads(await request.read())
            req = parse_request(
                body,
                config,
                limit_keys=endpoint.limit_keys,
                find_tool=endpoint.find_tool,
                length_forced="x-sim-max-tokens" in request.headers,
            )
        except orjson.JSONDecodeError as exc:
            return error_response(
                400,
                f"could not parse the JSON body: {exc}",
                anthropic_shape=endpoint.anthropic_errors,
            )
        except SimulatorConfigError as exc:
            return error_response(
                400, str(exc), anthropic_shape=endpoint.anthropic_errors, param=exc.key
            )
        except BadRequestError as exc:
            return error_response(
                400, exc.message, anthropic_shape=endpoint.anthropic_errors, param=exc.param
            )
        answer = endpoint.make(req)
        record = self._state.streams.open(request_id, request.path, started)
        if req.stream:
            return await pump(request, answer.events(), config, record, arrival)
        # Non-streaming answers are logged too, so a test can see a proxy close the connection
        # while the "generation" runs.
        delay = answer_delay_s(config, answer.content_event_count())
        try:
            await sleep_until(
                asyncio.get_running_loop(),
                arrival + delay,
                functools.partial(connection_closed, request),
            )
        except ClientClosedError:
            record.finish("client_closed")
            return web.Response(status=499)  # nobody will read it
        except asyncio.CancelledError:
            transport = request.transport
            record.finish(
                "client_closed" if transport is None or transport.is_closing() else "cancelled"
            )
            raise
        response = json_response(answer.body(), request_id=request_id)
        record.finish("complete")
        return response

    async def replay(self, request: web.Request) -> web.StreamResponse:
        """Replay the recording, whatever was asked."""
        arrival, started, request_id = _arrival(request)
        try:
            config = self._state.config.with_overrides(request.headers)
        except SimulatorConfigError as exc:
            return error_response(400, str(exc), param=exc.key)
        await request.read()
        events = self._state.replay_events or ()
        record = self._state.streams.open(request_id, request.path, started)
        if self._state.timed is not None:
            return await replay_timed(request, self._state.timed, record, started)
        return await pump(request, ((event, True) for event in events), config, record, arrival)

    async def models(self, request: web.Request) -> web.Response:
        """List the simulated models (OpenAI ``GET /v1/models`` shape)."""
        data = [
            {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "streamhop"}
            for name in MODELS
        ]
        return json_response({"object": "list", "data": data})

    async def list_streams(self, request: web.Request) -> web.Response:
        """Return the stream log as a JSON list, oldest first."""
        return json_response(self._state.streams.to_json())

    async def clear_streams(self, request: web.Request) -> web.Response:
        """Empty the stream log."""
        self._state.streams.clear()
        return web.Response(status=204)

    async def not_found(self, request: web.Request) -> web.Response:
        """Answer an unknown route the way OpenAI does."""
        return error_response(404, f"Invalid URL ({request.method} {request.path})")


def _arrival(request: web.BaseRequest) -> tuple[float, float, str]:
    """Return the arrival stamps of a request: loop time (s, for deadlines), ``time.monotonic()``
    (s, for the stream log) and its id (the client's ``x-request-id``, else a new one)."""
    started = time.monotonic()
    arrival = asyncio.get_running_loop().time()
    return arrival, started, request.headers.get("x-request-id") or uuid.uuid4().hex
