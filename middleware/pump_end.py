"""How a pumped stream ends: the fault of a clean upstream close, and a fault's error event.

Decided once per stream, for :meth:`~streamhop.middleware.pump.StreamPump.feed_eof` and
:meth:`~streamhop.middleware.pump.StreamPump.error_events`; kept apart from the pump's per-read
and per-write path.
"""

from __future__ import annotations

from streamhop.middleware.pump_types import TERMINAL_EVENTS, Fault
from streamhop.middleware.rechunk.coalescer import Coalescer
from streamhop.middleware.rechunk.formats import error_format
from streamhop.middleware.sse.events import SSEEvent


def eof_fault(
    truncated: bool, coalescer: Coalescer, expect_terminal: bool, format_hint: str | None
) -> Fault | None:
    """Why a stream whose upstream body ended cleanly is not complete, if it is not.

    Args:
        truncated: the body ended inside an event (the decoder's verdict at EOF).
        coalescer: the stream's coalescer (its format and whether that format's stream is
            finished).
        expect_terminal: check the format's terminal event (the sidecar, which relays a
            provider; not the middleware, whose app may end its own stream as it likes).
        format_hint: the format expected when no event came (auto-detection saw nothing).

    Returns:
        ``upstream_truncated`` when the body ended inside an event (its bytes are dropped as a
        browser drops them); with ``expect_terminal``, ``upstream_incomplete`` when a format with
        a terminal event (:data:`~streamhop.middleware.pump_types.TERMINAL_EVENTS`) did not send
        it; else ``None``.
    """
    if truncated:
        return Fault("upstream_truncated", "the upstream stream ended in the middle of an event")
    if not expect_terminal:
        return None
    fmt = coalescer.format_name or format_hint
    if coalescer.incomplete or (coalescer.format_name is None and fmt in TERMINAL_EVENTS):
        return Fault(
            "upstream_incomplete",
            "the upstream closed the stream before it was finished (expected "
            f"{TERMINAL_EVENTS.get(fmt or '', '?')}); the answer is incomplete",
        )
    return None


def error_events(format_name: str | None, fault: Fault) -> list[SSEEvent]:
    """The terminal error event for ``fault`` in the format ``format_name`` (``None``: not
    known, as ``auto`` before any event); none for a plain ``sse`` stream, whose events streamhop
    never rewrites or adds to."""
    event = error_format(format_name).error_event(fault.code, fault.message)
    return [] if event is None else [event]
