"""streamhop's stream engine and ASGI middleware.

The path a byte takes, one package each: :mod:`.sse` (bytes to events and back, WHATWG §9.2),
:mod:`.rechunk` (the coalescer and the per-provider merge rules), :mod:`.pump` (one stream's
reader/writer with backpressure), :mod:`.controls` (the ``X-Streamhop-*`` request headers),
:mod:`.observe` (metrics) and :mod:`.asgi` (:class:`StreamHopMiddleware`). Nothing here imports
aiohttp or the sidecar.

The names below are loaded on first use (PEP 562), so importing the sans-IO engine
(``streamhop.middleware.sse.decoder``) loads no server, Starlette or prometheus_client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .asgi.middleware import ClientDisconnectedError, StreamHopMiddleware
    from .errors import ConfigError, EventTooLargeError, SSEProtocolError, StreamHopError
    from .rechunk.coalescer import Coalescer
    from .rechunk.formats import FORMAT_NAMES, detect_format, get_format
    from .sse.decoder import END, NEED_DATA, SSEDecoder
    from .sse.encoder import encode_event, encode_events
    from .sse.events import SSEEvent

_WHERE = {
    "StreamHopMiddleware": "asgi.middleware",
    "ClientDisconnectedError": "asgi.middleware",
    "Coalescer": "rechunk.coalescer",
    "ConfigError": "errors",
    "EventTooLargeError": "errors",
    "SSEProtocolError": "errors",
    "StreamHopError": "errors",
    "SSEEvent": "sse.events",
    "FORMAT_NAMES": "rechunk.formats",
    "detect_format": "rechunk.formats",
    "get_format": "rechunk.formats",
    "END": "sse.decoder",
    "NEED_DATA": "sse.decoder",
    "SSEDecoder": "sse.decoder",
    "encode_event": "sse.encoder",
    "encode_events": "sse.encoder",
}

__all__ = [
    "END",
    "FORMAT_NAMES",
    "NEED_DATA",
    "ClientDisconnectedError",
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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
