"""streamhop's stream engine and ASGI middleware.

The engine is sans-IO: :class:`SSEDecoder` (bytes to events), :class:`Coalescer` (merge and
flush timing with an injected clock) and :func:`encode_events` (events to bytes).
:class:`StreamHopMiddleware` wraps the same engine around an ASGI app. Nothing here imports
aiohttp or the sidecar.
"""

from __future__ import annotations

from .asgi_middleware import StreamHopMiddleware
from .coalescer import Coalescer
from .errors import ConfigError, EventTooLargeError, SSEProtocolError, StreamHopError
from .events import SSEEvent
from .formats import FORMAT_NAMES, detect_format, get_format
from .sse_decoder import END, NEED_DATA, SSEDecoder
from .sse_encoder import encode_event, encode_events

__all__ = [
    "END",
    "FORMAT_NAMES",
    "NEED_DATA",
    "Coalescer",
    "ConfigError",
    "EventTooLargeError",
    "SSEDecoder",
    "SSEEvent",
    "SSEProtocolError",
    "StreamHopError",
    "StreamHopMiddleware",
    "detect_format",
    "encode_event",
    "encode_events",
    "get_format",
]
