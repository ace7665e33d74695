"""Sleeping to absolute deadlines while watching for the client going away.

Deadlines are event-loop times (``loop.time()``, seconds) computed from the request's arrival, so
oversleeping one event never delays the next (no drift from cumulative sleeps). A sleep is cut
into slices of at most :data:`POLL_S` and checks the connection between slices: with aiohttp's
default ``handler_cancellation=False`` a handler is not told that its client left, and a stream
that is waiting out a long TTFT must still notice a close promptly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web

from streamhop.sidecar.simulate.errors import ClientClosedError

#: Longest sleep between two checks of the connection, in seconds.
POLL_S = 0.01


def connection_closed(request: web.BaseRequest) -> bool:
    """Return whether the client's connection for ``request`` is gone (or going)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def sleep_until(
    loop: asyncio.AbstractEventLoop, deadline: float, is_closed: Callable[[], bool]
) -> None:
    """Return at loop time ``deadline`` (seconds), or raise once the connection is closed.

    Args:
        loop: the running loop; ``deadline`` is on its clock.
        deadline: ``loop.time()`` value to wake at; a past deadline returns at once.
        is_closed: reports whether the client connection is gone.

    Raises:
        ClientClosedError: ``is_closed()`` became true while sleeping.
    """
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, POLL_S))
        if is_closed():
            raise ClientClosedError("client closed the connection while the stream was waiting")


PRECISE_LEAD_S = 0.002
""":func:`sleep_until_precise` sleeps on the loop's timer until this long before its deadline,
then yields to the loop until the deadline."""


async def sleep_until_precise(deadline: float, is_closed: Callable[[], bool]) -> None:
    """Return at ``time.monotonic()`` ``deadline`` (seconds) to within a loop turn, or raise
    once the connection is closed.

    The loop's own timers are millisecond-coarse (uvloop's clock ticks in milliseconds and is
    read once per turn), which a replay of recorded read times would add to every read. The
    last :data:`PRECISE_LEAD_S` are spent yielding to the loop (other streams run meanwhile),
    checking the monotonic clock each turn.

    Raises:
        ClientClosedError: ``is_closed()`` became true while sleeping.
    """
    loop = asyncio.get_running_loop()
    coarse = deadline - PRECISE_LEAD_S - time.monotonic()
    if coarse > 0:
        await sleep_until(loop, loop.time() + coarse, is_closed)
    while time.monotonic() < deadline:
        await asyncio.sleep(0)
        if is_closed():
            raise ClientClosedError("client closed the connection while the stream was waiting")
