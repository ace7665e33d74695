"""Writing one SSE event as several ``write()`` calls cut where a careless decoder breaks.

Real providers' bytes reach a proxy in TCP reads that split events anywhere: inside a multi-byte
UTF-8 sequence, inside a ``data:`` line, between the two ``\\n`` of the terminator. With
``split_writes`` each event is written in 2-3 pieces at offsets drawn from a per-stream RNG seeded
with ``SimulatorConfig.seed`` (so a failing run replays exactly): one cut right after the lead byte
of a multi-byte sequence when the event has one, a second either between the final ``\\n\\n`` or
at a random byte. Each piece is its own HTTP chunk (aiohttp's client shows them with
``iter_chunks()``), and with TCP_NODELAY its own TCP segment. When the event interval leaves room
(``SimulatorConfig.split_gap_s``) the pieces of a paced event are also spread over time so that
they arrive in separate reads; the last piece lands on the event's deadline.
"""

from __future__ import annotations

import asyncio
import random
import re

from aiohttp import web

from streamhop.sidecar.simulate.errors import ClientClosedError
from streamhop.sidecar.simulate.pacing import connection_closed, sleep_until

# A UTF-8 lead byte of a multi-byte sequence (0xC2-0xF4); cutting after it splits a code point.
_LEAD_BYTE = re.compile(rb"[\xc2-\xf4]")
_MIN_SPLIT_BYTES = 4


def split_offsets(data: bytes, rng: random.Random) -> tuple[int, ...]:
    """Return the sorted cut offsets (0 < offset < len) for one event.

    Args:
        data: the event's bytes.
        rng: the stream's split RNG.

    Returns:
        One or two offsets; empty for events shorter than 4 bytes.
    """
    size = len(data)
    if size < _MIN_SPLIT_BYTES:
        return ()
    match = _LEAD_BYTE.search(data, rng.randrange(size)) or _LEAD_BYTE.search(data)
    first = match.start() + 1 if match is not None else rng.randrange(1, size)
    between_newlines = data.endswith(b"\n\n") and rng.random() < 0.5
    second = size - 1 if between_newlines else rng.randrange(1, size)
    return (first,) if first == second else tuple(sorted((first, second)))


class SplitWriter:
    """Writes events to a prepared streaming response, split and timed as configured.

    Args:
        request: the request being answered (its transport tells if the client left).
        response: the prepared response.
        seed: seeds the cut offsets.
        split: whether to split at all.
        gap_s: seconds between the pieces of a paced event; 0 writes them back to back.
    """

    def __init__(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse,
        *,
        seed: int,
        split: bool,
        gap_s: float,
    ) -> None:
        self._request = request
        self._response = response
        self._rng = random.Random(seed) if split else None
        self._gap_s = gap_s
        self._loop = asyncio.get_running_loop()

    def is_closed(self) -> bool:
        """Return whether the client's connection is gone (or going)."""
        return connection_closed(self._request)

    async def write_whole(self, data: bytes) -> None:
        """Write ``data`` in one piece, now (what a buffering hop releases, see
        :mod:`.buffering`).

        Raises:
            ClientClosedError: the connection closed before or during the write.
        """
        try:
            await self._response.write(data)
        except ConnectionError as exc:
            raise ClientClosedError(f"client closed the connection: {exc}") from exc

    async def write(self, data: bytes, deadline: float | None) -> None:
        """Write one event so that its last byte leaves at loop time ``deadline`` (seconds).

        Args:
            data: the whole SSE event.
            deadline: ``loop.time()`` when the event is due, or ``None`` to write at once.

        Raises:
            ClientClosedError: the connection closed before or during the write.
        """
        rng = self._rng
        cuts = split_offsets(data, rng) if rng is not None else ()
        try:
            if not cuts:
                if deadline is not None:
                    await sleep_until(self._loop, deadline, self.is_closed)
                await self._response.write(data)
                return
            view = memoryview(data)
            last = len(cuts)
            begin = 0
            for index, end in enumerate((*cuts, len(data))):
                if deadline is not None:
                    due = deadline - (last - index) * self._gap_s
                    await sleep_until(self._loop, due, self.is_closed)
                await self._response.write(view[begin:end])
                begin = end
        except ConnectionError as exc:  # aiohttp's ClientConnectionResetError on a closed transport
            raise ClientClosedError(f"client closed the connection: {exc}") from exc
