"""The process's registry of open streams, shared by both edges and the server: readiness,
draining, what ``max_streams`` counts, what shutdown stops, and the stop endpoint's index."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol


class Stoppable(Protocol):
    """An open stream that shutdown can end."""

    def stop(self, reason: str) -> None: ...


@dataclass(slots=True)
class SidecarState:
    """Process-wide state the endpoints share: readiness, draining, the open streams (what
    shutdown stops)."""

    ready: bool = False
    draining: bool = False
    streams: set[Stoppable] = field(default_factory=set)
    running: dict[
        tuple[str, str], tuple[asyncio.Task[None], Stoppable, list[tuple[bytes, bytes]]]
    ] = field(default_factory=dict)
    """HTTP streams and WebSocket generations by ``(route prefix, stream id)``, with their task
    and the caller's headers (for the stop endpoint's credential check)."""
    on_drain: list[Callable[[], list[Coroutine[Any, Any, Any]]]] = field(default_factory=list)
    """Called once when draining starts (the resume handoffs of HTTP and WebSocket streams);
    each returns its handoffs, which the server runs and lets finish before it closes
    connections."""
    receiving: int = 0
    """Requests whose body is being read (they count toward ``max_streams`` too)."""

    @property
    def active(self) -> int:
        """Requests in flight, those still sending their body included."""
        return len(self.streams) + self.receiving

    def stop_all(self, reason: str) -> int:
        """End every open stream with a terminal error (``shutdown``); returns how many."""
        streams = list(self.streams)
        for stream in streams:
            stream.stop(reason)
        return len(streams)
