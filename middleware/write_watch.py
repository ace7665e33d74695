"""The stall watchdog of the pump's downstream writes, and when the last one completed.

One write is in flight at a time (:class:`~streamhop.middleware.pump.StreamPump`); each must
complete within ``stall_timeout_s``. One timer per ``stall_timeout_s`` while writes happen,
re-armed from the write in flight, instead of a timeout object per write: writes are the pump's
most frequent await. Part of the compiled engine (``ENGINE`` in ``setup.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, final

from streamhop.middleware.pump_types import ClientStallError

_T = TypeVar("_T")


@final
class WriteWatch:
    """Times the downstream writes of one stream.

    Args:
        loop: the running loop (its timers).
        stall_timeout_s: seconds one write may take.
        on_stall: called when a write exceeds it; it must cancel the task awaiting
            :meth:`timed`, which then raises :class:`ClientStallError`.

    Attributes:
        writing_since: ``time.monotonic()`` when the write in flight started; ``None`` between
            writes.
        last_write: ``time.monotonic()`` when the last write completed (at first: when the
            watch was made).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, stall_timeout_s: float, on_stall: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._stall = stall_timeout_s
        self._on_stall = on_stall
        self._timer: asyncio.TimerHandle | None = None
        self._stalled = False
        self.writing_since: float | None = None
        self.last_write = time.monotonic()

    async def timed(self, write: Awaitable[_T], start: float, pending: str) -> _T:
        """Await one downstream write that started at ``start``; sets :attr:`last_write`.

        Args:
            write: the write.
            start: ``time.monotonic()`` when it started.
            pending: what it writes, for the error (``"120 bytes"``).

        Raises:
            ClientStallError: the write did not complete within ``stall_timeout_s``.
        """
        self.writing_since = start
        if self._timer is None:
            self._timer = self._loop.call_later(self._stall, self._check)
        try:
            result = await write
        except asyncio.CancelledError:
            if self._stalled:
                raise ClientStallError(
                    f"client accepted no bytes for {self._stall:g} s ({pending} pending)"
                ) from None
            raise
        finally:
            self.writing_since = None
        self.last_write = time.monotonic()
        return result

    def cancel(self) -> None:
        """Stop the timer (the stream's writes are over)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _check(self) -> None:
        self._timer = None
        since = self.writing_since
        if since is None:
            return  # no write in flight: re-armed by the next one
        left = since + self._stall - time.monotonic()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check)
            return
        self._stalled = True
        self._on_stall()
