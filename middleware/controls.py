"""The ``X-Streamhop-*`` request headers: per-request instructions to streamhop, never forwarded.

One parser for the sidecar and the middleware, so both accept and refuse the same values:

* ``X-Streamhop-Flush-Interval-Ms``: the flush window in milliseconds (finite, ``>= 0``);
* ``X-Streamhop-Mode``: ``coalesce`` or ``passthrough``;
* ``X-Streamhop-Flush-Boundary``: ``none``, ``word``, ``sentence`` or ``line``, where a window
  write may cut merged text (docs/rechunking.md);
* ``X-Streamhop-Timeout-Ms``: a deadline in milliseconds (``0 <`` value ``<=``
  :data:`MAX_TIMEOUT_MS`); it can only shorten a route's ``timeout_s``
  (:meth:`Controls.deadline_s`);
* ``X-Streamhop-On-Disconnect``: ``cancel``, ``detach`` or ``grace``, what the sidecar does when
  the client leaves (where the route allows the client to choose; docs/resume.md);
* ``X-Streamhop-Record``: ``1`` asks the sidecar to record this stream, ``0`` not to (where
  the route allows it, ``client_record``; docs/recording.md).

The middleware ignores the last three (the app owns its deadlines and its generation, and the
middleware records nothing).

Header names are matched in any case (RFC 9110 §5.1); other ``X-Streamhop-*`` names are ignored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, get_args

from streamhop.middleware.defaults import OnDisconnect, RechunkMode
from streamhop.middleware.errors import StreamHopError
from streamhop.middleware.pump_types import PumpOptions
from streamhop.middleware.rechunk.boundary import FLUSH_BOUNDARIES, FlushBoundary

PREFIX: Final = b"x-streamhop-"
MODES: Final = get_args(RechunkMode)
ON_DISCONNECT: Final = get_args(OnDisconnect)
MAX_TIMEOUT_MS: Final = 86_400_000
"""Largest ``X-Streamhop-Timeout-Ms`` accepted (one day)."""


class ControlHeaderError(StreamHopError):
    """An ``X-Streamhop-*`` header has a value streamhop cannot use (answered with 400)."""


@dataclass(frozen=True, slots=True)
class Controls:
    """Per-request overrides (``None``: use the configured value).

    Attributes:
        flush_interval_ms: the flush window, milliseconds.
        mode: ``coalesce`` or ``passthrough``.
        timeout_ms: the requested deadline, milliseconds.
        on_disconnect: ``cancel``, ``detach`` or ``grace``.
        flush_boundary: ``none``, ``word``, ``sentence`` or ``line``.
        record: ``True`` to record the stream (``X-Streamhop-Record: 1``), ``False`` not to.
    """

    flush_interval_ms: float | None = None
    mode: str | None = None
    timeout_ms: float | None = None
    on_disconnect: str | None = None
    flush_boundary: FlushBoundary | None = None
    record: bool | None = None

    def over(self, base: Controls) -> Controls:
        """These values where set, ``base``'s elsewhere (a WebSocket message over its
        handshake)."""
        return Controls(
            self.flush_interval_ms
            if self.flush_interval_ms is not None
            else base.flush_interval_ms,
            self.mode if self.mode is not None else base.mode,
            self.timeout_ms if self.timeout_ms is not None else base.timeout_ms,
            self.on_disconnect if self.on_disconnect is not None else base.on_disconnect,
            self.flush_boundary if self.flush_boundary is not None else base.flush_boundary,
            self.record if self.record is not None else base.record,
        )

    def apply(self, options: PumpOptions) -> PumpOptions:
        """``options`` with this request's flush interval, mode and flush boundary where it
        sent them (the one place where control headers override a pump's settings)."""
        if self.flush_interval_ms is None and self.mode is None and self.flush_boundary is None:
            return options
        return dataclasses.replace(
            options,
            flush_interval_s=options.flush_interval_s
            if self.flush_interval_ms is None
            else self.flush_interval_ms / 1000.0,
            passthrough=options.passthrough if self.mode is None else self.mode == "passthrough",
            flush_boundary=self.flush_boundary or options.flush_boundary,
        )

    def deadline_s(self, route_timeout_s: float | None) -> float | None:
        """Seconds the request may take: ``route_timeout_s`` shortened, never extended, by
        ``timeout_ms``; ``None`` for no deadline."""
        if self.timeout_ms is None:
            return route_timeout_s
        requested = self.timeout_ms / 1000.0
        return requested if route_timeout_s is None else min(route_timeout_s, requested)


NO_CONTROLS: Final = Controls()


def is_control(name: bytes) -> bool:
    """True for an ``X-Streamhop-*`` header name (any case)."""
    return name[:12].lower() == PREFIX


def parse_controls(headers: Iterable[tuple[bytes, bytes]]) -> Controls:
    """Read the control headers among ``headers`` (ASGI-style ``(name, value)`` bytes).

    Raises:
        ControlHeaderError: a control header with an invalid value, naming the header.
    """
    flush = mode = timeout = on_disconnect = None
    boundary: FlushBoundary | None = None
    record: bool | None = None
    for name, value in headers:
        if not is_control(name):
            continue
        key = name[12:].lower()
        text = value.decode("latin-1").strip()
        if key == b"flush-interval-ms":
            flush = _milliseconds("X-Streamhop-Flush-Interval-Ms", text)
        elif key == b"mode":
            if text not in MODES:
                raise ControlHeaderError(
                    f"X-Streamhop-Mode must be 'coalesce' or 'passthrough', got {text!r}"
                )
            mode = text
        elif key == b"timeout-ms":
            timeout = _milliseconds("X-Streamhop-Timeout-Ms", text)
            if timeout == 0 or timeout > MAX_TIMEOUT_MS:
                raise ControlHeaderError(
                    f"X-Streamhop-Timeout-Ms must be > 0 and <= {MAX_TIMEOUT_MS}, got {text!r}"
                )
        elif key == b"on-disconnect":
            if text not in ON_DISCONNECT:
                allowed = ", ".join(repr(value) for value in ON_DISCONNECT)
                raise ControlHeaderError(
                    f"X-Streamhop-On-Disconnect must be one of {allowed}, got {text!r}"
                )
            on_disconnect = text
        elif key == b"flush-boundary":
            boundary = _flush_boundary(text)
        elif key == b"record":
            if text not in ("0", "1"):
                raise ControlHeaderError(f"X-Streamhop-Record must be '1' or '0', got {text!r}")
            record = text == "1"
    if (
        flush is None
        and mode is None
        and timeout is None
        and on_disconnect is None
        and boundary is None
        and record is None
    ):
        return NO_CONTROLS
    return Controls(flush, mode, timeout, on_disconnect, boundary, record)


def _flush_boundary(text: str) -> FlushBoundary:
    for boundary in FLUSH_BOUNDARIES:
        if text == boundary:
            return boundary
    raise ControlHeaderError(
        f"X-Streamhop-Flush-Boundary must be one of {', '.join(FLUSH_BOUNDARIES)}, got {text!r}"
    )


def _milliseconds(header: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ControlHeaderError(
            f"{header} must be a number of milliseconds, got {text!r}"
        ) from None
    if not value >= 0 or value == math.inf:
        raise ControlHeaderError(f"{header} must be a finite number >= 0, got {text!r}")
    return value
