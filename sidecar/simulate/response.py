"""Driving one SSE response: headers, paced content events, split writes and the stream record.

Timing model (all deadlines on the loop clock, from the request's arrival): events that carry no
generated content (``message_start``, the role chunk, ``response.created``, finish and usage
chunks, ``[DONE]``) are written as soon as the previous event is out; content event ``k`` is due at
``arrival + ttft + k / events_per_second``. In burst mode (``events_per_second == 0``) only the
first content event waits, for the TTFT. A non-streaming answer is sent when its last content
event would have been (:func:`answer_delay_s`).

With the ``buffered`` fault (``buffered_every_ms``) the events go through a
:class:`~.buffering.HoldingWriter`: generated on the same deadlines, written in lumps.

A recording replayed with its timeline (``--timing``, :func:`replay_timed`) is written read by
read instead: each recorded read as one write (one HTTP chunk) at its recorded delay.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable

from aiohttp import web
from aiohttp.tcp_helpers import tcp_nodelay

from streamhop.sidecar.simulate.buffering import HoldingWriter
from streamhop.sidecar.simulate.config import SimulatorConfig
from streamhop.sidecar.simulate.errors import ClientClosedError
from streamhop.sidecar.simulate.pacing import (
    connection_closed,
    sleep_until,
    sleep_until_precise,
)
from streamhop.sidecar.simulate.request import Event
from streamhop.sidecar.simulate.streams import ServedResponse
from streamhop.sidecar.simulate.timing import TimedReplay
from streamhop.sidecar.simulate.writer import SplitWriter

# In burst mode nothing else awaits while the socket accepts data, so the pump yields to the loop
# every this many content events: other streams and the stream log stay served.
_BURST_YIELD_EVERY = 64

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}


def answer_delay_s(config: SimulatorConfig, content_events: int) -> float:
    """Return seconds from arrival until a non-streaming answer of ``content_events`` is ready."""
    return config.ttft_s + max(0, content_events - 1) * config.interval_s


async def pump(
    request: web.BaseRequest,
    events: Iterable[Event],
    config: SimulatorConfig,
    record: ServedResponse,
    arrival: float,
) -> web.StreamResponse:
    """Stream ``events`` as an SSE response, paced per ``config``.

    Args:
        request: the request being answered.
        events: the SSE events, each flagged content (paced) or not.
        config: the simulator config with this request's overrides.
        record: the stream's record; updated as events go out, finished at the end.
        arrival: ``loop.time()`` seconds when the request arrived.

    Returns:
        The response (complete, or abandoned because the client closed it).

    Raises:
        asyncio.CancelledError: the handler was cancelled (with ``handler_cancellation`` on, aiohttp
            does that when the client disconnects); the record is finished first.
    """
    response = web.StreamResponse(headers={**SSE_HEADERS, "x-request-id": record.id})
    if request.version >= (1, 1):
        response.enable_chunked_encoding()
    await response.prepare(request)
    transport = request.transport
    if transport is not None:
        tcp_nodelay(transport, True)
    split = SplitWriter(
        request, response, seed=config.seed, split=config.split_writes, gap_s=config.split_gap_s
    )
    holder = (
        HoldingWriter(split, arrival=arrival, every_s=config.buffered_every_s)
        if config.buffered_every_s > 0
        else None
    )
    writer: SplitWriter | HoldingWriter = split if holder is None else holder
    first_due = arrival + config.ttft_s
    interval = config.interval_s
    content = 0
    try:
        for data, is_content in events:
            if not is_content:
                await writer.write(data, None)
                record.events += 1
                continue
            if content == 0:
                await writer.write(data, first_due)
                record.first_content = time.monotonic()
            elif interval:
                await writer.write(data, first_due + content * interval)
            else:
                await writer.write(data, None)
                if content % _BURST_YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            record.events += 1
            content += 1
        if holder is not None:
            await holder.close()
        await response.write_eof()
    except (ClientClosedError, ConnectionError):  # ConnectionError: from write_eof()
        record.finish("client_closed")
        return response
    except asyncio.CancelledError:
        record.finish("client_closed" if writer.is_closed() else "cancelled")
        raise
    record.finish("complete")
    return response


async def replay_timed(
    request: web.BaseRequest, replay: TimedReplay, record: ServedResponse, arrival: float
) -> web.StreamResponse:
    """Answer with a recording, read by read at the recorded delays (:mod:`.timing`).

    Args:
        request: the request being answered.
        replay: the recording and its timing.
        record: the stream's record; finished at the end.
        arrival: ``time.monotonic()`` seconds when the request arrived; every delay counts from
            it (to within a loop turn: :func:`~.pacing.sleep_until_precise`).

    Returns:
        The response (complete, cut or abandoned as the recording ended, or because the client
        closed it).
    """
    loop = asyncio.get_running_loop()

    def closed() -> bool:
        return connection_closed(request)

    headers = {"Cache-Control": "no-cache", "x-request-id": record.id}
    headers.update((n, v) for n, v in replay.headers if v.lower() != "identity")
    response = web.StreamResponse(status=replay.status, headers=headers)
    if request.version >= (1, 1):
        response.enable_chunked_encoding()  # a chunk per recorded read
    try:
        await sleep_until_precise(arrival + replay.headers_delay_s, closed)
        await response.prepare(request)
        transport = request.transport
        if transport is not None:
            tcp_nodelay(transport, True)
        for delay_s, chunk in replay.reads:
            await sleep_until_precise(arrival + delay_s, closed)
            if chunk:
                await response.write(chunk)
            record.events += 1
            if record.first_content is None:
                record.first_content = time.monotonic()
        if replay.ending == "abort":
            if request.transport is not None:
                request.transport.abort()
            record.finish("complete")
            return response
        if replay.ending == "hold":
            await sleep_until(loop, math.inf, closed)
        await response.write_eof()
    except (ClientClosedError, ConnectionError):
        record.finish("client_closed")
        return response
    except asyncio.CancelledError:
        record.finish("client_closed" if closed() else "cancelled")
        raise
    record.finish("complete")
    return response
