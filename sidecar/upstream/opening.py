"""The bookkeeping around one stream that the HTTP proxy and the WebSocket bridge share.

:meth:`~.edge.EdgeContext.open` makes it: the request's record (a new random stream id), its
bound metrics, its trace span, and the headers to send upstream. :meth:`OpenStream.register`
counts the stream in the process's :class:`~.registry.SidecarState` (what ``max_streams``
counts and shutdown stops);
:meth:`OpenStream.close` unregisters it, observes its metrics, ends its span and writes its log
line, and hands a recorded stream to its writer (:mod:`streamhop.sidecar.recording`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from streamhop.middleware.observe.metrics import StreamMetrics
from streamhop.middleware.observe.stream_end import observe_end
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.observe.tracing import RequestTrace
from streamhop.sidecar.recording import StreamRecorder
from streamhop.sidecar.upstream.registry import SidecarState, Stoppable


@dataclass(slots=True)
class OpenStream:
    """A stream's bookkeeping from :func:`open_stream` until :meth:`close`."""

    record: StreamRecord
    observed: StreamMetrics
    headers: list[tuple[str, str]]
    deadline: float | None
    traced: RequestTrace | None
    registry: SidecarState
    on_finish: Callable[[StreamRecord], None] | None
    member: Stoppable | None = None
    recorder: StreamRecorder | None = None

    def register(self, member: Stoppable) -> None:
        """Count ``member`` as open (shutdown stops it) until :meth:`close`."""
        self.member = member
        self.registry.streams.add(member)
        self.observed.active.inc()

    def close(self) -> None:
        """The stream is over: unregister, observe its metrics, end its span, log it."""
        record = self.record
        if self.member is not None:
            self.registry.streams.discard(self.member)
            self.observed.active.dec()
        record.finished_at = time.monotonic()
        observe_end(self.observed, record)
        if self.traced is not None:
            self.traced.finish(record)
        if self.on_finish is not None:
            self.on_finish(record)
        if self.recorder is not None:
            self.recorder.end(record)  # written off the loop (docs/recording.md)
