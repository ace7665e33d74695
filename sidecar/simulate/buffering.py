"""The ``buffered`` fault: a hop between the provider and its client that holds the stream.

Proxies with response buffering, compressing middlewares and some load balancers do not pass an
SSE stream on as it comes: they collect it and let it through in lumps, so the client sees
nothing for a while and then dozens of events in the same millisecond. :class:`HoldingWriter`
plays such a hop in front of the simulated provider: the provider generates its events at the
usual pace (each on its deadline, in real time), the hop holds them, and every
``buffered_every_ms`` from the request's arrival it writes everything it holds in one write;
when the answer ends it writes the rest at once (it sees the end of the body, as a buffering
proxy does). A proxy in front of the simulator (streamhop) sees the lumps, and its burst
detector should count them.

The stream log still describes the provider behind the hop: ``first_content`` is when the first
content event was generated, ``events`` how many were generated.
"""

from __future__ import annotations

import asyncio
import math

from streamhop.sidecar.simulate.pacing import sleep_until
from streamhop.sidecar.simulate.writer import SplitWriter


class HoldingWriter:
    """Takes the events of one stream like :class:`SplitWriter`, holds them, and writes what it
    holds at fixed release times.

    Args:
        writer: where released events go, each release in one write (a hop flushes its buffer
            in one go; the pieces of a split write could reach a reader far apart).
        arrival: ``loop.time()`` seconds when the request arrived; releases are at
            ``arrival + k * every_s``.
        every_s: seconds between releases (> 0).
    """

    def __init__(self, writer: SplitWriter, *, arrival: float, every_s: float) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0, got {every_s!r}")
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._arrival = arrival
        self._every_s = every_s
        self._held: list[bytes] = []
        self._release_at: float | None = None
        self.releases = 0
        """Writes made so far (the end's included)."""

    def __repr__(self) -> str:
        return (
            f"<HoldingWriter every={self._every_s:g}s held={len(self._held)} events "
            f"releases={self.releases}>"
        )

    def is_closed(self) -> bool:
        """Return whether the client's connection is gone (or going)."""
        return self._writer.is_closed()

    async def write(self, data: bytes, deadline: float | None) -> None:
        """Generate one event at loop time ``deadline`` (``None``: now) and hold it; first write
        what is held if a release time passes before it.

        Raises:
            ClientClosedError: the connection closed while waiting or writing.
        """
        if deadline is not None:
            if self._release_at is not None and deadline >= self._release_at:
                await self._release()
            await sleep_until(self._loop, deadline, self.is_closed)
        now = self._loop.time()
        if self._release_at is not None and now >= self._release_at:
            await self._release()
        if self._release_at is None:
            slots = math.floor((now - self._arrival) / self._every_s) + 1
            self._release_at = self._arrival + slots * self._every_s
        self._held.append(data)

    async def close(self) -> None:
        """The answer is complete: write what is still held, now.

        Raises:
            ClientClosedError: the connection closed during the write.
        """
        if self._held:
            await self._flush()

    async def _release(self) -> None:
        assert self._release_at is not None
        await sleep_until(self._loop, self._release_at, self.is_closed)
        await self._flush()

    async def _flush(self) -> None:
        data = b"".join(self._held)
        self._held.clear()
        self._release_at = None
        self.releases += 1
        await self._writer.write_whole(data)
