"""The upstream burst detector: sees a provider, or a hop in front of it, that buffers a stream.

A provider that streams sends its events as it generates them: a fast one every few
milliseconds, each read holding one event or two. A hop that buffers (a proxy with response
buffering, a compressing middleware, a load balancer that waits for a full buffer) holds them
and lets them through together, so the client sees nothing for a while and then everything at
once (the shape of "all 49 tokens arrive at the same millisecond"). This module counts that
shape, defined on what the reads show: a **burst** is a gap of at least ``gap_s`` with no
upstream event, followed by a *run* of reads with no gap between them that together complete at
least ``min_events`` events. A read continues the run when it comes within :data:`WINDOW_S`
(1 ms) of the previous read, or when it completes several events at once (they were already
waiting: the read was late, not the events) within :attr:`BurstDetector.run_gap_s` of it.

Why the second rule: on a busy process one burst is read over several reads more than 1 ms apart
(the loop serves other streams between them), so a window from the first read alone missed it
(a 1.5 s stall followed by 170 events: counted on a quiet machine, missed on a loaded one). A
provider that streams has its events read one per read (or two) as they arrive, so a slow first
token followed by paced events makes no run.

Sans-IO: the caller says when events arrived (:meth:`BurstDetector.arrival`, times in seconds
on one monotonic clock), so tests drive it with a fake clock. It works per **read**, not per
event: the events a read completes arrived in the same instant, so an arrival is a count and a
time, and the hot path allocates nothing per event.

Deliberate choices:

* the first arrival of a stream is measured from the stream's start (``started_at``): a hop that
  holds a whole answer and sends it at the end is the commonest buffering, and it has no gap
  between events at all, only the wait before the first;
* one burst is counted once, however many events follow within the window;
* what is measured is when streamhop *read* the events: a stalled event loop, or streamhop
  itself not reading while a slow client holds ``max_pending_bytes``, looks the same as a
  buffering hop (the proxy overhead metrics tell the first apart).
"""

from __future__ import annotations

from typing import Final

WINDOW_S: Final = 0.001
"""Events of one burst arrive within this many seconds of the first of them."""
DEFAULT_GAP_S: Final = 0.5
"""Default gap before a burst, in seconds (``[metrics] burst_gap_ms = 500``)."""
DEFAULT_MIN_EVENTS: Final = 20
"""Default events in a burst (``[metrics] burst_events = 20``)."""
RUN_GAP_MAX_S: Final = 0.05
"""The longest pause between two reads of one run (when the later read completes several
events), seconds; at most a tenth of ``gap_s``."""


class BurstDetector:
    """Counts the bursts of one stream.

    Args:
        gap_s: silence (seconds without an upstream event) that may precede a burst.
        min_events: events that must arrive within :data:`WINDOW_S` after such a gap.
        started_at: when the stream started (seconds, the clock of :meth:`arrival`); the first
            arrival's gap is measured from it. ``None``: the first arrival has no gap.

    Raises:
        ValueError: ``gap_s`` is not above :data:`WINDOW_S`, or ``min_events`` is below 2.
    """

    __slots__ = (
        "_run_events",
        "_running",
        "_seen",
        "bursts",
        "gap_s",
        "last_at",
        "last_gap_s",
        "min_events",
        "run_gap_s",
    )

    def __init__(
        self,
        gap_s: float = DEFAULT_GAP_S,
        min_events: int = DEFAULT_MIN_EVENTS,
        *,
        started_at: float | None = None,
    ) -> None:
        if not gap_s > WINDOW_S:
            raise ValueError(f"gap_s must be above the {WINDOW_S:g} s window, got {gap_s!r}")
        if min_events < 2:
            raise ValueError(f"min_events must be at least 2, got {min_events!r}")
        self.gap_s = gap_s
        self.min_events = min_events
        self.bursts = 0
        """Bursts counted so far."""
        self.last_at: float | None = started_at
        """When the last events arrived (the stream's start before any)."""
        self.last_gap_s: float | None = None
        """The gap before the last arrival, from the previous one; ``None`` for the first
        arrival of a stream (the wait for the first events is not a gap between two events)."""
        self._seen = False  # any events yet
        self._running = False  # reads since a gap form a run that may yet be a burst
        self._run_events = 0
        self.run_gap_s = min(RUN_GAP_MAX_S, gap_s / 10)
        """The longest pause between two reads of a run when the later one completes several
        events, seconds."""

    def __repr__(self) -> str:
        state = "watching" if self._running else "idle"
        return (
            f"<BurstDetector {state} bursts={self.bursts} gap={self.gap_s:g}s "
            f"min_events={self.min_events}>"
        )

    def arrival(self, events: int, now: float) -> bool:
        """Note that ``events`` upstream events arrived at ``now``.

        Args:
            events: events completed by one read (0 is ignored: a partial event or a comment).
            now: when they arrived, in seconds; never earlier than the previous call's.

        Returns:
            Whether this arrival completed a burst (then :attr:`bursts` grew by one).
        """
        if events <= 0:
            return False
        last = self.last_at
        seen = self._seen
        self._seen = True
        self.last_at = now
        if last is None:
            return False
        gap = now - last
        self.last_gap_s = gap if seen else None
        if gap >= self.gap_s:
            self._running = True
            self._run_events = events
        elif self._running and (gap <= WINDOW_S or (events > 1 and gap <= self.run_gap_s)):
            self._run_events += events
        else:
            self._running = False
            return False
        if self._run_events < self.min_events:
            return False
        self._running = False
        self.bursts += 1
        return True
