"""The sidecar's configuration as values: one frozen dataclass per TOML table, with defaults.

Every key is documented in ``config.example.toml`` and ``docs/config.md``; :mod:`.load` reads
and validates a file into these. Durations carry their unit in the name (``_s`` seconds, ``_ms``
milliseconds); sizes are bytes.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote_to_bytes

from yarl import URL

from streamhop.middleware import defaults
from streamhop.middleware.defaults import FormatName, OnDisconnect, RechunkMode, ResumeStoreKind
from streamhop.middleware.errors import ConfigError
from streamhop.middleware.rechunk.boundary import DEFAULT_MAX_BOUNDARY_WAIT, FlushBoundary

DEFAULT_LISTEN: Final = "127.0.0.1:8787"
DEFAULT_ADMIN_LISTEN: Final = "127.0.0.1:9464"
# A URL in free text: a scheme, "://", then everything up to whitespace (trailing punctuation
# is cut off in :func:`_redact_one`); yarl decides where its authority and userinfo end.
_URL_IN_TEXT: Final = re.compile(r"(?i)([a-z][a-z0-9+.-]*)://\S*")
_TRAILING_PUNCTUATION: Final = ".,;:!?)'\""
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
    body_timeout_s: float = 60.0
    """Seconds between two reads of a request body (nginx's ``client_body_timeout``); past it
    the request gets ``408`` and frees its ``max_streams`` slot."""
    max_websockets: int = 1000
    """Open WebSockets (idle or not) per process; past it the handshake gets 503."""
    websocket_idle_timeout_s: float = 300.0
    """A WebSocket with no generation running and no client message for this long is closed
    (1001)."""
    trust_env: bool = True
    """Honour ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY`` for routes that set
    no ``proxy`` (``sidecar/upstream/egress.py``)."""
    tls_cert_file: str | None = None
    """PEM certificate (chain) of the proxy listener; with ``tls_key_file``, the proxy port
    speaks HTTPS (the admin port stays plain). Reloaded when the file changes."""
    tls_key_file: str | None = None
    """PEM private key of ``tls_cert_file``."""
    workers: int = 1
    """Worker processes serving the proxy port (``"auto"`` in the file: the CPUs this process
    may use, resolved at load); above 1, a supervisor process runs them and the admin listener
    (``sidecar/supervise/``)."""


DEFAULT_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
"""The methods the provider APIs use (OpenAI, Anthropic: GET, POST, DELETE; the rest for
OpenAI-compatible servers' admin APIs). ``OPTIONS`` preflights are answered by streamhop."""
NEVER_FORWARDED_METHODS: frozenset[str] = frozenset(("TRACE", "CONNECT"))
"""Methods no route may forward: ``TRACE`` echoes the request (the route's key included),
``CONNECT`` opens a tunnel past the route."""


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One ``[[routes]]`` entry: requests whose path starts with ``prefix`` go to ``upstream``.

    The request path after ``prefix`` is appended to the upstream URL's path, and the query is
    kept: prefix ``/openai`` + upstream ``https://api.openai.com`` sends ``/openai/v1/models`` to
    ``https://api.openai.com/v1/models``.
    """

    prefix: str
    upstream: str
    format: FormatName = "auto"
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    connect_timeout_s: float = 10.0
    retries: int = 1
    on_disconnect: OnDisconnect = "cancel"
    client_on_disconnect: bool = False
    """Whether a request may choose ``on_disconnect`` itself (``X-Streamhop-On-Disconnect``)."""
    disconnect_grace_ms: int = defaults.DISCONNECT_GRACE_MS
    """With ``on_disconnect = "grace"``: milliseconds the generation runs on into the resume log
    after its client left; a resume within them continues it, else it is cancelled
    (``grace_expired``)."""
    client_record: bool = False
    """Whether a request may ask for its stream to be recorded (``X-Streamhop-Record: 1``,
    with ``[record] dir`` set; docs/recording.md)."""
    read_timeout_s: float = 60.0
    keepalive_interval_s: float = defaults.KEEPALIVE_INTERVAL_S
    allowed_origins: tuple[str, ...] = ()
    """Browser origins allowed on this route, besides ``[server] allowed_origins``."""
    methods: tuple[str, ...] = DEFAULT_METHODS
    """HTTP methods forwarded on this route; any other gets ``405`` (``TRACE`` and ``CONNECT``
    never: a ``TRACE``-echoing upstream would send the route's key back)."""
    proxy: str | None = None
    """HTTP forward proxy (``http://[user:password@]host:port``); ``""``: direct even where
    the environment names a proxy; ``None``: the environment's (``[server] trust_env``)."""
    tls_ca_file: str | None = None
    """PEM CA bundle trusted for this upstream *instead of* the system store."""
    tls_client_cert: str | None = None
    """PEM client certificate (chain) for mutual TLS; its key in ``tls_client_key`` (or in the
    same file)."""
    tls_client_key: str | None = None
    tls_server_name: str | None = None
    """Name sent as SNI and verified in the upstream's certificate instead of the URL's host."""
    tls_verify: bool = True
    """``false`` turns certificate verification off (a warning is logged at start)."""

    @property
    def upstream_display(self) -> str:
        """``upstream`` with any userinfo replaced by ``***``: the form for errors and logs."""
        return redact_url(self.upstream)

    @property
    def upstream_headers(self) -> Mapping[str, str]:
        """The headers set on every upstream request: ``headers``, plus ``Authorization: Basic``
        from ``upstream``'s userinfo when it has one (it replaces a client's ``Authorization``
        like any route header; the URL sent upstream carries no userinfo)."""
        basic = basic_authorization(self.upstream)
        if basic is None:
            return self.headers
        # Config load refuses userinfo beside an Authorization header; built in code, the
        # userinfo wins.
        headers = {n: v for n, v in self.headers.items() if n.lower() != "authorization"}
        return {**headers, "Authorization": basic}


@dataclass(frozen=True, slots=True)
class RechunkConfig:
    """``[rechunk]``: how SSE streams are re-chunked.

    ``flush_boundary``: where a window write may cut merged text (``none``, ``word``,
    ``sentence``, ``line``); ``max_boundary_wait_ms``: how long text may wait for one.
    ``coalesce_reads``: after the first content, leave upstream bytes in the kernel while held
    events wait for their window, and read them in one go just before the write (fewer reads
    and wakes; a phase change that arrives meanwhile waits up to one window).
    """

    mode: RechunkMode = "coalesce"
    flush_interval_ms: float = defaults.FLUSH_INTERVAL_MS
    max_flush_bytes: int = defaults.MAX_FLUSH_BYTES
    max_event_bytes: int = defaults.MAX_EVENT_BYTES
    flush_boundary: FlushBoundary = "none"
    max_boundary_wait_ms: float = DEFAULT_MAX_BOUNDARY_WAIT * 1000
    coalesce_reads: bool = False


@dataclass(frozen=True, slots=True)
class BackpressureConfig:
    """``[backpressure]``: bounds for slow clients."""

    max_pending_bytes: int = defaults.MAX_PENDING_BYTES
    stall_timeout_s: float = defaults.STALL_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class ResumeConfig:
    """``[resume]``: the replay log for ``Last-Event-ID`` (off unless ``enabled``).

    ``window_s``: seconds a log is kept after its stream ended, and the longest a detached
    generation runs on without a client. ``max_streams``: logs the ``memory`` store keeps.
    ``max_stream_bytes``: encoded event bytes one log may hold (both stores).
    ``max_total_bytes``: encoded event bytes all logs of the ``memory`` store may hold together
    (past it the oldest are evicted, finished ones first; Redis has its own bounds).
    """

    enabled: bool = False
    store: ResumeStoreKind = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    window_s: float = 300.0
    max_streams: int = 1000
    max_stream_bytes: int = 8 * 1024 * 1024
    max_total_bytes: int = 128 * 1024 * 1024
    """A quarter of the Helm chart's 512 MiB memory limit (charts/streamhop/values.yaml)."""
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
class RecordConfig:
    """``[record]``: production streams written to disk for replay (docs/recording.md); off
    while ``dir`` is empty.

    ``sample``: the share (0 to 1) of streams on ``routes`` (empty: every route) recorded.
    ``max_bytes``: bytes all recordings in ``dir`` may take; past it the oldest are deleted.
    ``max_recording_bytes``: upstream bytes one recording may hold in memory; a longer stream
    is not recorded. ``record_request``: keep the request body in the timeline.
    """

    dir: str = ""
    sample: float = 0.0
    max_bytes: int = 1024 * 1024 * 1024
    max_recording_bytes: int = 16 * 1024 * 1024
    routes: tuple[str, ...] = ()
    record_request: bool = False

    @property
    def enabled(self) -> bool:
        """True when streams may be recorded (``dir`` is set)."""
        return bool(self.dir)


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
    record: RecordConfig = RecordConfig()


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
    The userinfo is what yarl (and so aiohttp) takes for it: everything before the **last**
    ``@`` of the authority, so ``http://u:p@ss@host`` shows as ``http://***@host``. A URL whose
    authority yarl cannot split (an invalid port or IPv6 literal) has its whole authority
    hidden when it holds an ``@``. A URL ends at whitespace: userinfo with a space in it
    cannot be found in free text (config load refuses such URLs).
    """
    return _URL_IN_TEXT.sub(_redact_one, url)


def _redact_one(match: re.Match[str]) -> str:
    found = match.group(0)
    if "@" not in found:
        return found
    scheme = match.group(1)
    # Prose around a URL ("... http://h:9: refused", "URL('http://h')") is not part of it; the
    # cut-off characters hold no "@", so the userinfo is entirely in ``text``.
    text = found.rstrip(_TRAILING_PUNCTUATION)
    tail = found[len(text) :]
    try:
        url = URL(text, encoded=True)
        authority = url.raw_authority
    except ValueError:
        return f"{scheme}://***{tail}"  # where its authority ends is unknown: hide it all
    if "@" not in authority:
        return found  # an "@" in the path or query is no userinfo
    rest = text[len(scheme) + 3 + len(authority) :] + tail
    try:
        host = url.with_user(None).raw_authority  # what follows the last "@"
    except ValueError:
        return f"{scheme}://***{rest}"
    return f"{scheme}://***@{host}{rest}"


@functools.lru_cache(maxsize=64)
def basic_authorization(url: str) -> str | None:
    """``Basic <credentials>`` (RFC 7617) for ``url``'s userinfo; ``None`` without userinfo.

    The credentials are the user name and password as written, percent-decoded to bytes (a
    missing password is empty): what aiohttp sends for a URL with userinfo, except that
    non-ASCII characters go as UTF-8 (RFC 7617 §2.1), not Latin-1.
    """
    parsed = URL(url, encoded=True)
    user, password = parsed.raw_user, parsed.raw_password
    if user is None and password is None:
        return None
    pair = unquote_to_bytes(user or "") + b":" + unquote_to_bytes(password or "")
    return "Basic " + base64.b64encode(pair).decode("ascii")


@functools.lru_cache(maxsize=16)
def effective_allowed_hosts(server: ServerConfig, *, admin: bool = False) -> frozenset[str] | None:
    """The ``Host`` names a listener accepts (lower-case, no port); ``None`` means any.

    Cached per (frozen, hashable) ``ServerConfig``: every request checks its ``Host``, and the
    answer depends on the config only.

    ``allowed_hosts`` when set (``"*"`` in it: any). Otherwise: bound to a loopback address
    (:func:`is_loopback_host`), the listen host, ``localhost`` and the loopback literals — the
    DNS-rebinding defence for a sidecar on a developer's machine or in a pod; bound to any other
    address (``0.0.0.0`` in a gateway behind a Service), any host.

    Args:
        server: the ``[server]`` table.
        admin: for the admin listener: its default follows ``admin_listen``, not ``listen``.
    """
    if server.allowed_hosts:
        if "*" in server.allowed_hosts:
            return None
        return frozenset(server.allowed_hosts)
    key = "server.admin_listen" if admin else "server.listen"
    host, _ = parse_hostport(key, server.admin_listen if admin else server.listen)
    if not is_loopback_host(host):
        return None
    host = host.lower()
    try:
        # Also the address as a browser writes it (``0:0:0:0:0:0:0:1`` is sent as ``[::1]``).
        canonical = str(ipaddress.ip_address(host))
    except ValueError:
        canonical = host  # localhost
    return frozenset((host, canonical, *LOOPBACK_HOSTS))


def is_loopback_host(host: str) -> bool:
    """True when a listen host (brackets stripped) is a loopback address however it is written.

    ``localhost``, or an IP address that :mod:`ipaddress` says is loopback: all of 127.0.0.0/8,
    ``::1`` in any spelling (``0:0:0:0:0:0:0:1``), and IPv4-mapped ``::ffff:127.x.y.z``. A
    string comparison would take ``0:0:0:0:0:0:0:1`` for a public address and turn the
    ``Host`` check off.
    """
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # Python < 3.13 does not call ::ffff:127.0.0.1 loopback
    return ip.is_loopback
