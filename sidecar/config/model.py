"""The sidecar's configuration as values: one frozen dataclass per TOML table, with defaults.

Every key is documented in ``config.example.toml`` and ``docs/config.md``; :mod:`.load` reads
and validates a file into these. Durations carry their unit in the name (``_s`` seconds, ``_ms``
milliseconds); sizes are bytes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from streamhop.middleware.errors import ConfigError
from streamhop.middleware.rechunk.boundary import DEFAULT_MAX_BOUNDARY_WAIT, FlushBoundary

DEFAULT_LISTEN: Final = "127.0.0.1:8787"
DEFAULT_ADMIN_LISTEN: Final = "127.0.0.1:9464"
_USERINFO: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")
DEFAULT_BINDING_HEADERS: Final = ("authorization", "x-api-key", "api-key", "cookie")
LOOPBACK_HOSTS: Final = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: listeners and shutdown."""

    listen: str = DEFAULT_LISTEN
    admin_listen: str = DEFAULT_ADMIN_LISTEN
    drain_timeout_s: float = 30.0
    max_streams: int = 10_000
    max_request_bytes: int = 4 * 1024 * 1024
    allowed_origins: tuple[str, ...] = ()
    """Browser origins (``scheme://host[:port]``) allowed to call every route; others get 403."""
    allowed_hosts: tuple[str, ...] = ()
    """``Host`` names accepted (421 otherwise); empty: see :func:`effective_allowed_hosts`."""
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One ``[[routes]]`` entry: requests whose path starts with ``prefix`` go to ``upstream``.

    The request path after ``prefix`` is appended to the upstream URL's path, and the query is
    kept: prefix ``/openai`` + upstream ``https://api.openai.com`` sends ``/openai/v1/models`` to
    ``https://api.openai.com/v1/models``.
    """

    prefix: str
    upstream: str
    format: str = "auto"
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    connect_timeout_s: float = 10.0
    retries: int = 1
    on_disconnect: str = "cancel"
    client_on_disconnect: bool = False
    """Whether a request may choose ``on_disconnect`` itself (``X-Streamhop-On-Disconnect``)."""
    read_timeout_s: float = 60.0
    keepalive_interval_s: float = 15.0
    allowed_origins: tuple[str, ...] = ()
    """Browser origins allowed on this route, besides ``[server] allowed_origins``."""

    @property
    def upstream_display(self) -> str:
        """``upstream`` with any userinfo replaced by ``***``: the form for errors and logs."""
        return redact_url(self.upstream)


@dataclass(frozen=True, slots=True)
class RechunkConfig:
    """``[rechunk]``: how SSE streams are re-chunked.

    ``flush_boundary``: where a window write may cut merged text (``none``, ``word``,
    ``sentence``, ``line``); ``max_boundary_wait_ms``: how long text may wait for one.
    """

    mode: str = "coalesce"
    flush_interval_ms: float = 20.0
    max_flush_bytes: int = 16 * 1024
    max_event_bytes: int = 1024 * 1024
    flush_boundary: FlushBoundary = "none"
    max_boundary_wait_ms: float = DEFAULT_MAX_BOUNDARY_WAIT * 1000


@dataclass(frozen=True, slots=True)
class BackpressureConfig:
    """``[backpressure]``: bounds for slow clients."""

    max_pending_bytes: int = 1024 * 1024
    stall_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ResumeConfig:
    """``[resume]``: the replay log for ``Last-Event-ID`` (off unless ``enabled``).

    ``window_s``: seconds a log is kept after its stream ended, and the longest a detached
    generation runs on without a client. ``max_streams``: logs the ``memory`` store keeps.
    ``max_stream_bytes``: encoded event bytes one log may hold (both stores).
    """

    enabled: bool = False
    store: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    window_s: float = 300.0
    max_streams: int = 1000
    max_stream_bytes: int = 8 * 1024 * 1024
    binding_key: str = ""
    """HMAC key binding a stream to its caller's credentials; empty: random per process."""
    binding_headers: tuple[str, ...] = DEFAULT_BINDING_HEADERS
    handoff_jitter_ms: float = 2000.0
    """With ``store = "redis"``, on SIGTERM each reconnecting SSE client is told to reconnect
    after a random delay in ``[0, handoff_jitter_ms]`` (docs/kubernetes.md)."""


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """``[tracing]``: OpenTelemetry export (off unless ``otlp_endpoint`` is set): spans, and
    with ``export_metrics`` the GenAI metrics too, over OTLP/HTTP."""

    otlp_endpoint: str | None = None
    service_name: str = "streamhop"
    export_metrics: bool = False


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: label cardinality control, and the upstream burst detector.

    A burst is ``burst_gap_ms`` without an upstream event, then at least ``burst_events``
    events within 1 ms (see :mod:`streamhop.middleware.observe.bursts`).
    """

    models: tuple[str, ...] = ()
    burst_gap_ms: float = 500.0
    burst_events: int = 20


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; build it with :func:`load_config` or :func:`config_from_dict`."""

    routes: tuple[RouteConfig, ...]
    server: ServerConfig = ServerConfig()
    rechunk: RechunkConfig = RechunkConfig()
    backpressure: BackpressureConfig = BackpressureConfig()
    resume: ResumeConfig = ResumeConfig()
    tracing: TracingConfig = TracingConfig()
    metrics: MetricsConfig = MetricsConfig()


def parse_hostport(key: str, value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8787`` for IPv6).

    Raises:
        ConfigError: not ``HOST:PORT`` with a port in 0..65535.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(key, f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def redact_url(url: str) -> str:
    """``url`` (or any text holding URLs) with userinfo replaced: ``scheme://***@host``.

    Used for every upstream and Redis URL that reaches an error message, a response or a log.
    """
    return _USERINFO.sub(r"\1***@", url)


@functools.lru_cache(maxsize=16)
def effective_allowed_hosts(server: ServerConfig) -> frozenset[str] | None:
    """The ``Host`` names the proxy accepts (lower-case, no port); ``None`` means any.

    Cached per (frozen, hashable) ``ServerConfig``: every request checks its ``Host``, and the
    answer depends on the config only.

    ``allowed_hosts`` when set (``"*"`` in it: any). Otherwise: bound to a loopback address,
    the listen host, ``localhost`` and the loopback literals — the DNS-rebinding defence for a
    sidecar on a developer's machine or in a pod; bound to any other address (``0.0.0.0`` in a
    gateway behind a Service), any host.
    """
    if server.allowed_hosts:
        if "*" in server.allowed_hosts:
            return None
        return frozenset(server.allowed_hosts)
    host, _ = parse_hostport("server.listen", server.listen)
    host = host.lower()
    if host not in LOOPBACK_HOSTS and not host.startswith("127."):
        return None
    return frozenset((host, *LOOPBACK_HOSTS))
