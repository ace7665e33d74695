"""The stream control path, ``<route prefix>/streamhop/v1/streams/<stream-id>``: streamhop's own,
never proxied, whatever the route's ``methods``.

``DELETE`` stops a running or detached generation (docs/resume.md, "Stop is not disconnect");
``GET`` with ``Accept: text/event-stream`` follows one (docs/resume.md, "Followers"): it is a
resume from the first event (or after ``Last-Event-ID``), answered by the proxy's own resume
(:meth:`~.proxy.Proxy._resume`), so a follower has a resume's binding, bounds and limits; only
the followers' metrics (:mod:`~..observe.follow_metrics`) tell the two apart. Any other method
gets ``405``. Both are bound to the caller as a resume is: another route or other credentials
get the same ``404 stream_not_found`` as an unknown stream.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from streamhop.sidecar.admission.admit import Admitted, capacity
from streamhop.sidecar.admission.routing import CONTROL_METHODS
from streamhop.sidecar.asgi import Message, Receive, Scope, Send, json_error
from streamhop.sidecar.config import RouteConfig
from streamhop.sidecar.observe.follow_metrics import follower_metrics
from streamhop.sidecar.resume import ResumeError, ResumeStore, parse_last_event_id
from streamhop.sidecar.upstream.edge import EdgeContext

logger = logging.getLogger(__name__)

__all__ = ["STOP_POLL_S", "STOP_WAIT_S", "ResumeAnswer", "StreamControl", "last_event_id"]

STOP_WAIT_S = 5.0
"""Longest a stop request waits for the stopped stream's upstream to be closed."""
STOP_POLL_S = 0.05
"""How often a stop sent to other replicas checks whether the stream's log ended."""

ResumeAnswer = Callable[[Receive, Send, RouteConfig, str, str | None, Scope], Awaitable[None]]
"""Answers a resume request from the log: ``(receive, send, route, last_event_id, fmt,
scope)`` (:meth:`~.proxy.Proxy._resume`)."""


class StreamControl:
    """Serves the stream control path of every route.

    Args:
        edge: what both edges share (the stop index, the resume store and binding, metrics).
        resume: answers a resume request (a follower is one).
    """

    def __init__(self, edge: EdgeContext, resume: ResumeAnswer) -> None:
        self.edge = edge
        self._resume = resume
        self.followers = follower_metrics(edge.metrics.registry)
        self.followers.start(route.prefix for route in edge.config.routes)

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, admitted: Admitted, stream_id: str
    ) -> None:
        """Answer one request on the control path of ``admitted.route`` for ``stream_id``."""
        route, fmt, method = admitted.route, admitted.fmt, scope["method"]
        if method == "DELETE":
            await self.stop(scope, send, route, stream_id, fmt)
        elif method == "GET":
            await self.follow(scope, receive, send, route, stream_id, fmt)
        else:
            allowed = ", ".join(CONTROL_METHODS)
            message = f"method {method[:20]!r} is not served on the stream path ({allowed} are)"
            allow = [(b"allow", allowed.encode())]
            await json_error(send, 405, fmt, "method_not_allowed", message, extra_headers=allow)

    async def follow(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: RouteConfig,
        stream_id: str,
        fmt: str | None,
    ) -> None:
        """``GET``: follow the stream from its first event, or after the request's
        ``Last-Event-ID``, to its end.

        ``406 not_acceptable`` without ``Accept: text/event-stream``; ``409 resume_disabled``
        with ``[resume]`` off (nothing is logged: nothing to follow); ``400
        bad_last_event_id`` for a ``Last-Event-ID`` of another stream; ``503
        too_many_streams`` at ``max_streams``; then as a resume (``404 stream_not_found``,
        ``410``, ``503 resume_unavailable``). Served while draining, as a resume is (an
        ``EventSource`` reconnecting must not get a 503)."""
        edge = self.edge
        if not _accepts_event_stream(scope):
            message = "a follower reads text/event-stream: send Accept: text/event-stream"
            await json_error(send, 406, fmt, "not_acceptable", message)
            return
        if edge.resume is None:
            message = "following a stream reads its resume log, and [resume] is off"
            await json_error(send, 409, fmt, "resume_disabled", message)
            return
        after = last_event_id(scope) or f"{stream_id}:0"
        parsed = parse_last_event_id(after)
        if parsed is not None and parsed[0] != stream_id:
            message = f"Last-Event-ID names another stream than the path's {stream_id!r}"
            await json_error(send, 400, fmt, "bad_last_event_id", message)
            return
        server = edge.config.server
        refusal = capacity(server, fmt, draining=False, active=edge.state.active)
        if refusal is not None:
            code, text = refusal.code, refusal.message
            await json_error(send, refusal.status, fmt, code, text, retry_after=True)
            return
        follower = self.followers.follower(route.prefix)

        async def counted(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body":
                follower.wrote(len(message["body"]))

        try:
            await self._resume(receive, counted, route, after, fmt, scope)
        finally:
            follower.close()

    async def stop(
        self, scope: Scope, send: Send, route: RouteConfig, stream_id: str, fmt: str | None
    ) -> None:
        """``DELETE``: stop a running or detached generation of this caller on this route
        (the resume binding: another route or other credentials get the same 404 as an
        unknown stream), wait for its upstream to be closed (at most :data:`STOP_WAIT_S`),
        answer 204."""
        edge = self.edge
        running = edge.state.running.get((route.prefix, stream_id))
        key = edge.log_key(route, stream_id, scope["headers"])
        status = 404
        if running is not None and hmac.compare_digest(
            key, edge.log_key(route, stream_id, running[2])
        ):
            work, driver, _ = running
            driver.stop("stop")
            await asyncio.wait((work,), timeout=STOP_WAIT_S)
            status = 204
        elif edge.resume is not None:
            # Not here: running on another replica sharing the store? Ask them all, then wait
            # for its log to end.
            status = await self._stop_elsewhere(edge.resume, key)
        if status == 404:
            message = f"no running stream {stream_id!r} for this caller on this route"
            await json_error(send, 404, fmt, "stream_not_found", message)
            return
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stop_elsewhere(self, store: ResumeStore, key: str) -> int:
        """204 once the log under ``key`` ended after a published stop, 202 if it did not end
        within :data:`STOP_WAIT_S`, 404 when no running log has that key."""
        try:
            if await store.log_state(key) != "running":
                return 404
            await store.publish_stop(key)
            deadline = time.monotonic() + STOP_WAIT_S
            while time.monotonic() < deadline:
                if await store.log_state(key) != "running":
                    return 204
                await asyncio.sleep(STOP_POLL_S)
        except ResumeError as exc:
            logger.warning("stop: resume store failed: %s", exc)
        return 202

    def stop_by_key(self, key: str) -> None:
        """Another replica published a stop: stop the local stream whose caller-bound key is
        ``key``, if one runs here."""
        binding = self.edge.binding
        for (prefix, stream_id), (_, driver, headers) in list(self.edge.state.running.items()):
            if hmac.compare_digest(key, binding.log_key(prefix, stream_id, headers)):
                driver.stop("stop")


def _accepts_event_stream(scope: Scope) -> bool:
    """True when the request's ``Accept`` lists ``text/event-stream`` itself (``*/*`` is not
    enough: a follower is a long-lived stream, opened only by a client that asks for one)."""
    for name, value in scope["headers"]:
        if name == b"accept":
            for media in value.split(b","):
                if media.split(b";", 1)[0].strip().lower() == b"text/event-stream":
                    return True
    return False


def last_event_id(scope: Scope) -> str | None:
    """The request's ``Last-Event-ID`` (a resume, or where a follower starts), or ``None``."""
    for name, value in scope["headers"]:
        if name == b"last-event-id":
            return str(value.decode("utf-8", "replace"))
    return None
