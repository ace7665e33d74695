"""A WebSocket ``resume`` (or ``follow``): a logged generation replayed after a ``seq``, then
followed live.

The resume log holds each written event in SSE wire form (with its ``id: <stream-id>:<seq>``);
here each is decoded back into an event and sent as one ``event`` message, the ``id`` included,
so a client sees exactly the messages the generation's own socket would have sent. The replay
ends with ``done``: ``complete`` when the logged stream is finished as its format defines it
(``Format.completion``: every choice's ``finish_reason`` or ``[DONE]``, ``message_stop``,
``response.completed``), ``error`` when it ends with an error event (the
generation failed or was stopped), or ``error`` + ``done`` ``error`` when the log is unknown
(``stream_not_found``: expired, another route, other credentials), was closed at its byte cap
(``resume_log_full``) or the store fails (``resume_unavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from streamhop.middleware.rechunk.formats import Format, detect_format
from streamhop.middleware.rechunk.formats.base import Completion
from streamhop.middleware.sse.decoder import SSEDecoder
from streamhop.middleware.sse.events import SSEEvent
from streamhop.sidecar.resume import (
    ResumeError,
    ResumeLogFullError,
    ResumeStore,
    StreamNotFoundError,
)
from streamhop.sidecar.websocket.messages import (
    ResumeMessage,
    done_frame,
    error_frame,
    event_frame,
)

SendFrames = Callable[[Sequence[str]], Awaitable[None]]
_REDECODE_LIMIT = 1 << 40  # the log holds whole events only; its own byte cap bounds them


class WsReplay:
    """One ``resume`` on a socket (the session treats it like a running generation: ``cancel``
    or a new ``request`` ends it).

    Args:
        store: the resume store.
        key: the caller-bound log key (route, stream id, handshake credentials).
        message: the client's ``resume`` message.
        send_frames: sends text frames in order.
        max_pending_bytes: the most frame text handed to ``send_frames`` at once, bytes (a
            larger frame goes alone): a reader that never reads holds that much, not the log.
        stall_timeout_s: seconds one send may take; past it the replay stops (:attr:`stalled`)
            and the session drops the socket, as for a live generation.
    """

    def __init__(
        self,
        store: ResumeStore,
        key: str,
        message: ResumeMessage,
        send_frames: SendFrames,
        max_pending_bytes: int,
        stall_timeout_s: float,
    ) -> None:
        self._store = store
        self._key = key
        self._message = message
        self._send_frames = send_frames
        self._limit = max_pending_bytes
        self._stall_s = stall_timeout_s
        self.ending = False
        """True once the replay sends its own ``done``."""
        self.stalled = False
        """True when the client accepted nothing for ``stall_timeout_s``."""

    def mark_cancel(self, reason: str) -> None:
        """A replay has no upstream to account a cancellation for."""

    async def run(self) -> None:
        """Replay, follow, end with ``done`` (``OSError``: the client left; nothing to send)."""
        with contextlib.suppress(OSError):
            try:
                reason, error = await self._replay()
            except TimeoutError:
                self.stalled = True  # nothing more is sent: the session drops the socket
                return
            self.ending = True
            frames = [] if error is None else [error_frame(*error)]
            frames.append(done_frame(reason))
            await self._send_frames(frames)

    async def _replay(self) -> tuple[str, tuple[str, str] | None]:
        message = self._message
        try:
            reader = await self._store.open_reader(self._key, message.stream_id)
        except StreamNotFoundError as exc:
            return "error", ("stream_not_found", str(exc))
        except ResumeLogFullError as exc:
            return "error", ("resume_log_full", str(exc))
        except ResumeError as exc:
            return "error", ("resume_unavailable", str(exc))
        decoder = SSEDecoder(_REDECODE_LIMIT)
        end = _End()
        try:
            async for batch in reader.events_after(message.after):
                frames: list[str] = []
                size = 0
                for data in batch:
                    for event in decoder.feed(data):
                        if event.data is None:
                            continue
                        end.observe(event)
                        frame = event_frame(event)
                        if frames and size + len(frame) > self._limit:
                            await self._send(frames)
                            frames, size = [], 0
                        frames.append(frame)
                        size += len(frame)
                if frames:
                    await self._send(frames)
        except ResumeLogFullError as exc:
            return "error", ("resume_log_full", str(exc))
        except ResumeError as exc:
            return "error", ("resume_unavailable", str(exc))
        return ("complete" if end.normal else "error"), None

    async def _send(self, frames: list[str]) -> None:
        """Send ``frames`` under the stall rule (``TimeoutError`` past ``stall_timeout_s``)."""
        async with asyncio.timeout(self._stall_s):
            await self._send_frames(frames)


def counted(send_frames: SendFrames, wrote: Callable[[int], None]) -> SendFrames:
    """``send_frames`` that reports the UTF-8 bytes of each batch it sent to ``wrote`` (a
    follower's :meth:`~..observe.follow_metrics.Follower.wrote`)."""

    async def send(frames: Sequence[str]) -> None:
        await send_frames(frames)
        wrote(sum(len(frame.encode()) for frame in frames))

    return send


class _End:
    """How a replayed log ends: its format's :class:`~streamhop.middleware.rechunk.formats.base.
    Completion`, fed every replayed event, and whether the last one is an error event."""

    __slots__ = ("completion", "format", "last")

    def __init__(self) -> None:
        self.format: Format | None = None
        self.completion: Completion | None = None
        self.last: SSEEvent | None = None

    def observe(self, event: SSEEvent) -> None:
        if self.format is None:
            self.format = detect_format(event)
            if self.format is not None:
                self.completion = self.format.completion()
        if self.completion is not None:
            self.completion.observe(event)
        self.last = event

    @property
    def normal(self) -> bool:
        """True when the log is finished and does not end with an error event. A replay after
        the last event (nothing new) counts as complete."""
        last, fmt = self.last, self.format
        if last is None or fmt is None or not fmt.has_terminal or self.completion is None:
            return True
        data = last.data or ""
        is_error = last.event == "error" or data.lstrip().startswith('{"error"')
        return self.completion.finished and not is_error
