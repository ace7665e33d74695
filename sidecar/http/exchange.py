"""The HTTP transport of one proxied request: how its outcomes become an ASGI response.

The flow (upstream request, deadline, pump, faults) is the
:class:`~streamhop.sidecar.upstream.driver.StreamDriver`'s; :class:`HttpTransport` says how each
outcome is written:

* refused before anything was sent: a JSON error in the provider's shape (502/503/504);
* an answer that is not re-chunked (not SSE, a ``HEAD``, an unknown ``Content-Encoding``): status,
  headers less hop-by-hop ones, and body bytes as received, still compressed if they were;
* an SSE answer: its headers with ``Cache-Control: no-cache``, ``X-Accel-Buffering: no``, no
  ``Content-Length``/``Content-Encoding``, ``X-Streamhop-Stream-Id``, ``X-Streamhop-Request-Id``
  and ``Server-Timing``; then body chunks; a fault ends it with a terminal error event in the
  stream's format (none on a plain ``sse`` stream).

With ``[resume]`` on, an SSE answer gets a resume log (:attr:`HttpTransport.log`): the pump
numbers every written event (``id: <stream-id>:<seq>``) and records it.
:meth:`HttpTransport.detach` (route ``on_disconnect = "detach"``, client gone) keeps the
generation running into the log only. When the stream ends, the log gets its end marker; a
stream stopped before its own end (a cancel) logs a terminal ``stream_cancelled`` error event
first, so a resume ends cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging

from streamhop.middleware.pump import Fault, Sink, StreamPump
from streamhop.sidecar.admission.headers import response_headers
from streamhop.sidecar.asgi import Scope, Send, json_error
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.resume import LogWriter, ResumeStore
from streamhop.sidecar.resume.store import close_log
from streamhop.sidecar.upstream.pool import UpstreamBodyError, UpstreamResponse, UpstreamTiming

logger = logging.getLogger(__name__)

_SSE_DROP = frozenset(
    (b"content-length", b"content-encoding", b"cache-control", b"x-accel-buffering")
)


class Phase(enum.Enum):
    """Where one proxied response is, toward its client. It only moves forward::

        WAITING ─► SENDING ─┬─► DETACHED     (the client left; into the log only)
                            ├─► HANDED_OFF   (told to reconnect elsewhere; into the log only)
                            └─► ENDED        (the response's end was sent)

    Whether the *generation* reached its own end (:meth:`HttpTransport.close` ran) is a
    separate fact: a detached stream goes on to its end into the resume log.
    """

    WAITING = "waiting"
    """Nothing sent yet: a failure can still be a JSON error with its own status."""
    SENDING = "sending"
    """The response started and the client is attached."""
    DETACHED = "detached"
    """The client left a resumable stream: the generation goes on into the log only."""
    HANDED_OFF = "handed off"
    """Draining: the client was told to reconnect elsewhere (an SSE ``retry``) and its response
    ended; the generation goes on into the log only."""
    ENDED = "ended"
    """The response's end went to the client."""


class HttpTransport:
    """Writes one request's outcomes to an ASGI ``send`` (see the module docstring).

    Args:
        scope, send: the ASGI request scope and send callable.
        record: the request's record.
        format_hint: the format of error bodies and events before the stream's own is known.
        resume: the resume store when ``[resume]`` is on, else ``None``.
        log_key: the caller-bound store key of this stream's log (with ``resume``).
    """

    def __init__(
        self,
        scope: Scope,
        send: Send,
        record: StreamRecord,
        format_hint: str | None,
        resume: ResumeStore | None = None,
        log_key: str | None = None,
    ) -> None:
        self.scope = scope
        self.send = send
        self.record = record
        self.format_hint = format_hint
        self.resume = resume
        self.log_key = log_key or record.stream_id
        self.phase = Phase.WAITING
        self.log: LogWriter | None = None
        """The stream's resume log (an SSE answer with ``[resume]`` on), else ``None``."""
        self.reconnects = _reconnects(scope)
        """The client reconnects by itself with ``Last-Event-ID`` (EventSource-like)."""
        self._closed = False  # the generation reached its own end (close() ran)
        self._lock = asyncio.Lock()  # orders a handoff with the pump's writes

    def __repr__(self) -> str:
        return f"<HttpTransport {self.record.stream_id} {self.phase.value}>"

    @property
    def started(self) -> bool:
        """Something was sent to the client (a failure can no longer change the status)."""
        return self.phase is not Phase.WAITING

    @property
    def handed_off(self) -> bool:
        """The client was told to reconnect elsewhere (:meth:`handoff`)."""
        return self.phase is Phase.HANDED_OFF

    @property
    def _attached(self) -> bool:
        return self.phase is Phase.WAITING or self.phase is Phase.SENDING

    def detach(self) -> None:
        """The client left: stop writing to it, keep generating into the resume log."""
        if self._attached:
            self.phase = Phase.DETACHED

    def accepts(self, response: UpstreamResponse) -> bool:
        ctype = response.headers.get("content-type", "")
        return ctype.startswith("text/event-stream") and self.scope["method"] != "HEAD"

    async def refuse(self, status: int, code: str, message: str) -> None:
        self.phase = Phase.ENDED
        await json_error(self.send, status, self.format_hint, code, message)

    async def pass_through(
        self, response: UpstreamResponse, read_timeout_s: float, stall_timeout_s: float
    ) -> None:
        """Copy the answer through untouched; each upstream read within ``read_timeout_s`` and
        each client write within ``stall_timeout_s`` (seconds). Past either, or when the
        upstream fails mid-body, the connection ends without completing the body: headers and
        part of the body are out, and an incomplete body is the only honest signal left."""
        send = self.send
        record = self.record
        headers = response_headers(response.raw_headers)
        async with asyncio.timeout(stall_timeout_s):
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
        self.phase = Phase.SENDING
        while True:
            try:
                async with asyncio.timeout(read_timeout_s):
                    chunk = await response.readany()
            except TimeoutError:
                record.error = "read_timeout"
                logger.warning(
                    "stream %s: upstream sent nothing for read_timeout_s=%g s mid-body",
                    record.request_id,
                    read_timeout_s,
                )
                return
            except UpstreamBodyError as exc:
                record.error = "disconnected"
                logger.warning("stream %s: upstream failed mid-body: %s", record.request_id, exc)
                return
            if not chunk:
                break
            record.bytes_in += len(chunk)
            try:
                async with asyncio.timeout(stall_timeout_s):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except TimeoutError:
                record.mark_cancel("stall")
                logger.warning(
                    "stream %s: client accepted nothing for stall_timeout_s=%g s; dropped",
                    record.request_id,
                    stall_timeout_s,
                )
                return
            record.bytes_out += len(chunk)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.phase = Phase.ENDED

    async def open(self, response: UpstreamResponse, timing: UpstreamTiming) -> Sink:
        record = self.record
        headers = response_headers(response.raw_headers, _SSE_DROP)
        headers += [
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"x-streamhop-stream-id", record.stream_id.encode()),
            (b"x-streamhop-request-id", record.request_id.encode()),
            (b"server-timing", _server_timing(timing).encode()),
        ]
        send = self.send
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        self.phase = Phase.SENDING

        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        if self.resume is None:
            return Sink(write)

        async def write_unless_detached(data: bytes) -> None:
            async with self._lock:
                if self.phase is Phase.SENDING:
                    await send({"type": "http.response.body", "body": data, "more_body": True})

        self.log = self.resume.open_writer(record.stream_id, headers, self.log_key)
        return Sink(write_unless_detached, on_events=self.log.stamp)

    async def handoff(self, retry_ms: int) -> bool:
        """Tell a reconnecting client to come back in ``retry_ms`` ms (an SSE ``retry`` field,
        WHATWG §9.2.6) and end its response cleanly, while the generation goes on into the
        resume log; the client resumes on a ready replica with ``Last-Event-ID``.

        Returns:
            False when there is nothing to hand off (no log, not an EventSource-like client,
            not started, already ended or detached).
        """
        if self.log is None or not self.reconnects:
            return False
        async with self._lock:
            if self.phase is not Phase.SENDING or self._closed:
                return False
            self.phase = Phase.HANDED_OFF
            with contextlib.suppress(OSError):  # the client is gone already: same outcome
                await self.send(
                    {
                        "type": "http.response.body",
                        "body": b"retry: %d\n\n" % retry_ms,
                        "more_body": True,
                    }
                )
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    async def close(self, pump: StreamPump, fault: Fault | None) -> None:
        tail = [] if fault is None else pump.error_events(fault, self.format_hint)
        await pump.finish(tail)
        self._closed = True
        if self._attached:
            self.phase = Phase.ENDED
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def after(self, pump: StreamPump | None) -> None:
        """End the resume log; a stream stopped before its end gets a terminal event first."""
        if self.log is not None:
            close_log(
                self.log, pump, ended=self._closed, record=self.record, format_hint=self.format_hint
            )


def _reconnects(scope: Scope) -> bool:
    """An EventSource (and fetch-based resumable clients) sends ``Accept: text/event-stream``;
    SDKs that would read a clean close as the end of the answer do not."""
    for name, value in scope["headers"]:
        if name == b"accept" and b"text/event-stream" in value.lower():
            return True
    return False


def _server_timing(timing: UpstreamTiming) -> str:
    """``Server-Timing`` (W3C Server Timing) with the hops known before the body, in ms."""
    parts = []
    if timing.connected is not None:
        parts.append(f"upstream-connect;dur={(timing.connected - timing.start) * 1000:.3f}")
    if timing.headers is not None:
        parts.append(f"upstream-headers;dur={(timing.headers - timing.start) * 1000:.3f}")
    return ", ".join(parts)
