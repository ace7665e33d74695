"""The options of :class:`~.middleware.StreamHopMiddleware`, checked once, when it is created.

:class:`MiddlewareOptions` holds every option but the registry (which picks the metric families,
see :mod:`.record`); it refuses a bad value with :class:`OptionError` naming the option, so a
mistake surfaces when the app is built, not at its first streamed response. Per request it
turns into the pump's :class:`~streamhop.middleware.pump.PumpOptions`, with the request's
``X-Streamhop-*`` overrides applied (:meth:`MiddlewareOptions.pump_options`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from streamhop.middleware import defaults
from streamhop.middleware.controls import MODES, Controls
from streamhop.middleware.errors import ConfigError
from streamhop.middleware.pump import PumpOptions
from streamhop.middleware.rechunk.boundary import FLUSH_BOUNDARIES, FlushBoundary
from streamhop.middleware.rechunk.formats import FORMAT_NAMES


class OptionError(ConfigError, ValueError):
    """An invalid ``StreamHopMiddleware`` option; ``key`` names it."""


@dataclass(frozen=True, slots=True)
class MiddlewareOptions:
    """The middleware's options, validated (see ``StreamHopMiddleware`` for what each does).

    Attributes:
        flush_interval_ms: merge window, milliseconds (``>= 0``).
        max_flush_bytes: held wire bytes at which a write is due (``> 0``).
        max_event_bytes: largest SSE event accepted from the app, bytes (``> 0``).
        max_pending_bytes: held bytes above which the app's ``send`` waits (``> 0``).
        stall_timeout_s: seconds one write to the client may take (``> 0``).
        stop_grace_s: seconds a listening app gets to stop by itself when told (``> 0``).
        keepalive_interval_s: seconds of silence on an SSE response before a ``: keep-alive``
            comment (``> 0``), or ``None`` for never.
        burst_gap_ms: upstream silence, milliseconds, that counts as a burst when at least
            ``burst_events`` events then arrive within 1 ms (``> 0``; docs/observability.md).
        burst_events: events arriving together after such a gap to count a burst (``>= 2``).
        flush_boundary: where a window write may cut merged text (``none``, ``word``,
            ``sentence``, ``line``; docs/rechunking.md).
        max_boundary_wait_ms: milliseconds text is held past its window for a boundary, at most
            (``>= 0``).
        mode: ``coalesce`` or ``passthrough``.
        format: a format name or ``auto``.
        models: model names kept as the ``model`` label (see :func:`model_names`).
        route_label: the ``route`` label, or ``None`` for the framework's route template.

    Raises:
        OptionError: (a ``ValueError``) a value out of range or of the wrong type; ``key``
            names the option.
    """

    flush_interval_ms: float = defaults.FLUSH_INTERVAL_MS
    max_flush_bytes: int = defaults.MAX_FLUSH_BYTES
    max_event_bytes: int = defaults.MAX_EVENT_BYTES
    max_pending_bytes: int = defaults.MAX_PENDING_BYTES
    stall_timeout_s: float = defaults.STALL_TIMEOUT_S
    stop_grace_s: float = 1.0
    keepalive_interval_s: float | None = defaults.KEEPALIVE_INTERVAL_S
    burst_gap_ms: float = 500.0
    burst_events: int = 20
    flush_boundary: str = "none"
    max_boundary_wait_ms: float = 250.0
    mode: str = "coalesce"
    format: str = "auto"
    models: frozenset[str] = frozenset()
    route_label: str | None = None

    def __post_init__(self) -> None:
        # Normalised in place (a frozen dataclass is only ever built here).
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        put("flush_interval_ms", _number("flush_interval_ms", self.flush_interval_ms, minimum=0.0))
        put("max_flush_bytes", _positive_int("max_flush_bytes", self.max_flush_bytes))
        put("max_event_bytes", _positive_int("max_event_bytes", self.max_event_bytes))
        put("max_pending_bytes", _positive_int("max_pending_bytes", self.max_pending_bytes))
        put("stall_timeout_s", _number("stall_timeout_s", self.stall_timeout_s, minimum=None))
        put("stop_grace_s", _number("stop_grace_s", self.stop_grace_s, minimum=None))
        if self.keepalive_interval_s is not None:
            put(
                "keepalive_interval_s",
                _number("keepalive_interval_s", self.keepalive_interval_s, minimum=None),
            )
        put("burst_gap_ms", _number("burst_gap_ms", self.burst_gap_ms, minimum=None))
        put("burst_events", _positive_int("burst_events", self.burst_events))
        if self.burst_events < 2:
            raise OptionError("burst_events", f"expected an integer >= 2, got {self.burst_events}")
        if self.flush_boundary not in FLUSH_BOUNDARIES:
            raise OptionError(
                "flush_boundary",
                f"expected one of {list(FLUSH_BOUNDARIES)}, got {self.flush_boundary!r}",
            )
        put(
            "max_boundary_wait_ms",
            _number("max_boundary_wait_ms", self.max_boundary_wait_ms, minimum=0.0),
        )
        if self.mode not in MODES:
            raise OptionError("mode", f"expected one of {list(MODES)}, got {self.mode!r}")
        if self.format not in FORMAT_NAMES:
            raise OptionError(
                "format", f"expected one of {list(FORMAT_NAMES)}, got {self.format!r}"
            )
        put("models", model_names(self.models))
        label = self.route_label
        if label is not None and (not isinstance(label, str) or not label):
            raise OptionError("route_label", f"expected a non-empty str, got {label!r}")

    @property
    def error_format(self) -> str | None:
        """The format of errors answered before a stream's format is known (``None``: OpenAI)."""
        return None if self.format == "auto" else self.format

    def _boundary(self) -> FlushBoundary:
        for boundary in FLUSH_BOUNDARIES:  # validated in __post_init__: one matches
            if boundary == self.flush_boundary:
                return boundary
        return "none"

    def pump_options(self, controls: Controls) -> PumpOptions:
        """The pump's options for one request: these options, with its control headers'
        ``flush_interval_ms``, ``mode`` and ``flush_boundary`` where it sent them
        (:meth:`Controls.apply`)."""
        return controls.apply(self._pump_options)

    @property
    def _pump_options(self) -> PumpOptions:
        return PumpOptions(
            format=self.format,
            flush_interval_s=self.flush_interval_ms / 1000.0,
            max_flush_bytes=self.max_flush_bytes,
            passthrough=self.mode == "passthrough",
            max_event_bytes=self.max_event_bytes,
            max_pending_bytes=self.max_pending_bytes,
            stall_timeout_s=self.stall_timeout_s,
            keepalive_interval_s=self.keepalive_interval_s,
            flush_boundary=self._boundary(),
            max_boundary_wait_s=self.max_boundary_wait_ms / 1000.0,
            # The app's own comments (sse-starlette's ping) go out while the stream idles.
            forward_comments=True,
        )


def model_names(models: object) -> frozenset[str]:
    """The model names of the ``models`` option (any iterable of ``str`` but a string itself).

    Raises:
        OptionError: a string, a non-iterable, or a name that is not a ``str`` (key ``models``).
    """
    if isinstance(models, str | bytes) or not isinstance(models, Iterable):
        raise OptionError("models", f"expected an iterable of names, got {models!r}")
    names = frozenset(models)
    if not all(isinstance(name, str) for name in names):
        raise OptionError("models", f"expected model names as str, got {sorted(names, key=repr)!r}")
    return names


def check_registry(registry: object) -> CollectorRegistry | None:
    """``registry`` if it is ``None`` or a ``CollectorRegistry``.

    Raises:
        OptionError: anything else (key ``registry``).
    """
    if registry is not None and not isinstance(registry, CollectorRegistry):
        raise OptionError("registry", f"expected a CollectorRegistry, got {registry!r}")
    return registry


def _number(key: str, value: object, *, minimum: float | None) -> float:
    """A finite number ``>= minimum`` (``None``: ``> 0``), as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OptionError(key, f"expected a finite number, got {value!r}")
    if minimum is None and value <= 0:
        raise OptionError(key, f"expected a number > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise OptionError(key, f"expected a number >= {minimum:g}, got {value!r}")
    return float(value)


def _positive_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise OptionError(key, f"expected an integer > 0, got {value!r}")
    return value
