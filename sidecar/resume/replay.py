"""Answers a resume request (one carrying ``Last-Event-ID`` while ``[resume]`` is on), and a
follower (``GET <prefix>/streamhop/v1/streams/<id>``, :mod:`~..http.control`: a resume from
``seq`` 0 or its own ``Last-Event-ID``).

No upstream request is made. The answer is ``200 text/event-stream`` with the original stream's
headers (``X-Streamhop-Stream-Id`` included), the logged events after the given ``seq``, then the
live tail until the generation's end marker. Before the response starts: ``400
bad_last_event_id`` (malformed), ``404 stream_not_found`` (unknown or expired), ``410
resume_log_full`` (the log passed its byte cap), ``503 resume_unavailable`` (store down). After it
started, a log closed or a store failing mid-replay ends the stream with a terminal error event;
so does shutdown (:meth:`Replay.stop`, code ``shutdown``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence

from streamhop.middleware.rechunk.formats import error_format
from streamhop.middleware.sse.encoder import encode_events
from streamhop.sidecar.asgi import Send, json_error
from streamhop.sidecar.resume.store import (
    ResumeError,
    ResumeLogFullError,
    ResumeStore,
    StreamNotFoundError,
    parse_last_event_id,
)

logger = logging.getLogger(__name__)

_SKIP_HEADERS = frozenset((b"server-timing", b"content-length"))


class Replay:
    """One resume request's state: whether its response started (so shutdown can end it with
    an error event rather than mid-air)."""

    def __init__(self) -> None:
        self.started = False
        self.task: asyncio.Task[None] | None = None
        self.stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        """End the replay now (``shutdown``); the caller then writes the terminal event."""
        self.stop_reason = reason
        if self.task is not None:
            self.task.cancel()

    async def end(self, send: Send, fmt: str | None) -> None:
        """After :meth:`stop`: a terminal error event and the end of the body (a ``503`` JSON
        error if the response had not started)."""
        if self.stop_reason is None:
            return
        message = "streamhop is shutting down; resume later"
        if not self.started:
            await json_error(send, 503, fmt, self.stop_reason, message, retry_after=True)
            return
        event = error_format(fmt).error_event(self.stop_reason, message)
        if event is not None:  # never added to a plain sse stream
            await send(
                {"type": "http.response.body", "body": encode_events([event]), "more_body": True}
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def replay(
    state: Replay,
    store: ResumeStore,
    send: Send,
    last_event_id: str,
    log_key: Callable[[str], str],
    fmt: str | None,
    stall_timeout_s: float,
    max_pending_bytes: int,
) -> None:
    """Serve one resume request on ``send`` (see the module docstring).

    The log is written in bodies of at most ``max_pending_bytes`` (an event larger than that
    goes alone), each under the stall rule, as a live stream is: a reader that never reads holds
    at most one such body in streamhop, not the log (a transport takes whatever it is handed).

    Args:
        state: where the replay notes that its response started.
        store: the resume store.
        send: the ASGI send callable.
        last_event_id: the ``Last-Event-ID`` header value.
        log_key: the store key of a stream id for this caller and route
            (:meth:`~.binding.ResumeBinding.log_key`); another caller's stream is not found.
        fmt: the route's format hint, for error bodies and events.
        stall_timeout_s: seconds one write may take before the client is dropped.
        max_pending_bytes: the largest body handed to ``send`` at once, bytes.
    """
    parsed = parse_last_event_id(last_event_id)
    if parsed is None:
        message = f"Last-Event-ID must be <stream-id>:<seq>, got {last_event_id[:80]!r}"
        await json_error(send, 400, fmt, "bad_last_event_id", message)
        return
    stream_id, seq = parsed
    try:
        reader = await store.open_reader(log_key(stream_id), stream_id)
    except StreamNotFoundError as exc:
        await json_error(send, 404, fmt, "stream_not_found", str(exc))
        return
    except ResumeLogFullError as exc:
        await json_error(send, 410, fmt, "resume_log_full", str(exc))
        return
    except ResumeError as exc:
        await json_error(send, 503, fmt, "resume_unavailable", str(exc), retry_after=True)
        return
    headers = [(n, v) for n, v in reader.headers if n.lower() not in _SKIP_HEADERS]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    state.started = True
    problem: tuple[str, str] | None = None
    try:
        async for batch in reader.events_after(seq):
            for body in bounded_bodies(batch, max_pending_bytes):
                async with asyncio.timeout(stall_timeout_s):
                    await send({"type": "http.response.body", "body": body, "more_body": True})
    except ResumeLogFullError as exc:
        problem = ("resume_log_full", str(exc))
    except (StreamNotFoundError, ResumeError) as exc:
        problem = ("resume_unavailable", str(exc))
    except TimeoutError:
        logger.warning("resume: client accepted nothing for %g s; dropped", stall_timeout_s)
        return
    if problem is not None:
        logger.warning("resume ended early: %s", problem[1])
        tail = error_format(fmt).error_event(*problem)
        if tail is not None:  # never added to a plain sse stream
            body = encode_events([tail])
            await send({"type": "http.response.body", "body": body, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def bounded_bodies(events: Sequence[bytes], limit: int) -> Iterator[bytes]:
    """Join encoded events into bodies of at most ``limit`` bytes, in order.

    Args:
        events: encoded SSE events (a batch of the log).
        limit: the largest body, bytes; an event larger than it is a body of its own.

    Returns:
        An iterator of non-empty bodies; only the body being built is held.
    """
    parts: list[bytes] = []
    size = 0
    for data in events:
        if parts and size + len(data) > limit:
            yield b"".join(parts)
            parts, size = [], 0
        parts.append(data)
        size += len(data)
    if parts:
        yield b"".join(parts)
