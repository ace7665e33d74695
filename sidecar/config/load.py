"""Reading and validating ``streamhop serve --config``: TOML in, :class:`~.model.Config` out.

Loading never half-succeeds: an unknown key, a wrong type or an impossible value raises
:class:`~streamhop.middleware.errors.ConfigError` naming the dotted key (``routes[1].upstream``)
and what was expected, before any socket is opened. ``${NAME}`` in route headers,
``resume.binding_key`` and ``resume.redis_url`` is replaced by the environment variable ``NAME``.
"""

from __future__ import annotations

import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeVar, cast, get_args
from urllib.parse import urlsplit

from streamhop.middleware.defaults import FormatName, OnDisconnect, RechunkMode, ResumeStoreKind
from streamhop.middleware.errors import ConfigError
from streamhop.middleware.rechunk.boundary import FLUSH_BOUNDARIES
from streamhop.sidecar.config.model import (
    NEVER_FORWARDED_METHODS,
    BackpressureConfig,
    Config,
    MetricsConfig,
    RechunkConfig,
    ResumeConfig,
    RouteConfig,
    ServerConfig,
    TracingConfig,
    basic_authorization,
    parse_hostport,
    redact_url,
)

_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file.

    Args:
        path: the file.
        environ: where ``${NAME}`` in route headers is looked up (default ``os.environ``).

    Raises:
        ConfigError: unreadable file, TOML syntax error, or an invalid key (named in the error).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("<file>", f"{path} is not valid TOML: {exc}") from exc
    return config_from_dict(data, environ)


def config_from_dict(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed config mapping (the TOML document's top-level table).

    Raises:
        ConfigError: the first invalid key, with its dotted name and the reason.
    """
    env = os.environ if environ is None else environ
    _no_unknown(
        "", data, {"server", "routes", "rechunk", "backpressure", "resume", "tracing", "metrics"}
    )
    server = _server(_table(data, "server"))
    raw_routes = data.get("routes", [])
    if not isinstance(raw_routes, list):
        raise ConfigError("routes", "expected an array of tables ([[routes]])")
    routes = tuple(_route(f"routes[{i}]", r, env) for i, r in enumerate(raw_routes))
    seen: set[str] = set()
    for i, route in enumerate(routes):
        if route.prefix in seen:
            raise ConfigError(f"routes[{i}].prefix", f"duplicate prefix {route.prefix!r}")
        seen.add(route.prefix)
    resume = _resume(_table(data, "resume"), env)
    for i, route in enumerate(routes):
        if route.on_disconnect == "detach" and not resume.enabled:
            raise ConfigError(
                f"routes[{i}].on_disconnect",
                "'detach' keeps generating into the resume log: set [resume] enabled = true",
            )
    return Config(
        routes=routes,
        server=server,
        rechunk=_rechunk(_table(data, "rechunk")),
        backpressure=_backpressure(_table(data, "backpressure")),
        resume=resume,
        tracing=_tracing(_table(data, "tracing")),
        metrics=_metrics(_table(data, "metrics")),
    )


def route_for_upstream(upstream: str) -> RouteConfig:
    """The single route ``--upstream URL`` stands for (``prefix = "/"``).

    Raises:
        ConfigError: ``upstream`` is not an http(s) URL.
    """
    return RouteConfig(prefix="/", upstream=_url("--upstream", upstream))


# --- sections -------------------------------------------------------------------------------


def _server(t: Mapping[str, Any]) -> ServerConfig:
    _no_unknown("server", t, set(ServerConfig.__dataclass_fields__))
    d = ServerConfig()
    listen = _str(t, "server", "listen", d.listen)
    admin = _str(t, "server", "admin_listen", d.admin_listen)
    parse_hostport("server.listen", listen)
    parse_hostport("server.admin_listen", admin)
    return ServerConfig(
        listen=listen,
        admin_listen=admin,
        drain_timeout_s=_num(t, "server", "drain_timeout_s", d.drain_timeout_s, minimum=0),
        max_streams=_int(t, "server", "max_streams", d.max_streams, minimum=1),
        max_request_bytes=_int(t, "server", "max_request_bytes", d.max_request_bytes, minimum=1),
        allowed_origins=_origins("server.allowed_origins", t.get("allowed_origins", [])),
        allowed_hosts=_hosts("server.allowed_hosts", t.get("allowed_hosts", [])),
        max_header_bytes=_int(t, "server", "max_header_bytes", d.max_header_bytes, minimum=1024),
        max_headers=_int(t, "server", "max_headers", d.max_headers, minimum=8),
        header_timeout_s=_num(t, "server", "header_timeout_s", d.header_timeout_s, minimum=0.1),
        body_timeout_s=_num(t, "server", "body_timeout_s", d.body_timeout_s, minimum=0.1),
        max_websockets=_int(t, "server", "max_websockets", d.max_websockets, minimum=1),
        websocket_idle_timeout_s=_num(
            t, "server", "websocket_idle_timeout_s", d.websocket_idle_timeout_s, minimum=0.1
        ),
        trust_env=_bool(t, "server", "trust_env", d.trust_env),
        **_listener_tls(t),
    )


def _optional_str(t: Mapping[str, Any], where: str, key: str) -> str | None:
    if key not in t:
        return None
    return _str(t, where, key, "")


def _listener_tls(t: Mapping[str, Any]) -> dict[str, str | None]:
    """``[server] tls_cert_file`` / ``tls_key_file``: both or neither, and loadable as a
    server certificate and its key."""
    cert = _optional_str(t, "server", "tls_cert_file") or None
    key = _optional_str(t, "server", "tls_key_file") or None
    if (cert is None) != (key is None):
        missing = "tls_key_file" if key is None else "tls_cert_file"
        raise ConfigError(f"server.{missing}", "set both tls_cert_file and tls_key_file, or none")
    if cert is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "server.tls_cert_file", f"cannot load {cert!r} with key {key!r}: {exc}"
            ) from None
    return {"tls_cert_file": cert, "tls_key_file": key}


def _proxy(key: str, t: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """A route's ``proxy``, with ``${NAME}`` replaced from the environment (credentials)."""
    value = _optional_str(t, key, "proxy")
    return None if value is None else _interpolate(f"{key}.proxy", value, env)


def _egress(key: str, route: RouteConfig) -> None:
    """A route's proxy URL and TLS files, checked at load (the errors name the key)."""
    from streamhop.sidecar.upstream.egress import EgressError, parse_proxy, tls_context

    if route.proxy:
        try:
            parse_proxy(route.proxy)
        except EgressError as exc:
            raise ConfigError(f"{key}.proxy", str(exc)) from None
    tls_keys = [
        name
        for name in ("tls_ca_file", "tls_client_cert", "tls_client_key", "tls_server_name")
        if getattr(route, name)
    ]
    if not route.upstream.lower().startswith("https://"):
        if tls_keys or not route.tls_verify:
            name = tls_keys[0] if tls_keys else "tls_verify"
            raise ConfigError(f"{key}.{name}", "applies to an https:// upstream only")
        return
    if route.tls_client_key and not route.tls_client_cert:
        raise ConfigError(f"{key}.tls_client_key", "set tls_client_cert too")
    try:
        tls_context(route)
    except EgressError as exc:
        name = "tls_ca_file" if "tls_ca_file" in str(exc) else "tls_client_cert"
        raise ConfigError(f"{key}.{name}", str(exc)) from None


def _route(key: str, t: Any, env: Mapping[str, str]) -> RouteConfig:
    if not isinstance(t, dict):
        raise ConfigError(key, "expected a table")
    _no_unknown(key, t, set(RouteConfig.__dataclass_fields__))
    if "prefix" not in t:
        raise ConfigError(f"{key}.prefix", 'missing (e.g. prefix = "/")')
    if "upstream" not in t:
        raise ConfigError(f"{key}.upstream", 'missing (e.g. upstream = "https://api.openai.com")')
    prefix = _str(t, key, "prefix", "/")
    if not prefix.startswith("/"):
        raise ConfigError(f"{key}.prefix", f"must start with '/', got {prefix!r}")
    d = RouteConfig(prefix="/", upstream="http://x")
    fmt = _choice(t, key, "format", d.format, FormatName)
    on_disconnect = _choice(t, key, "on_disconnect", d.on_disconnect, OnDisconnect)
    raw_headers = t.get("headers", {})
    if not isinstance(raw_headers, dict):
        raise ConfigError(f"{key}.headers", 'expected a table of header = "value"')
    headers: dict[str, str] = {}
    for name, value in raw_headers.items():
        hkey = f"{key}.headers.{name}"
        if not isinstance(value, str):
            raise ConfigError(hkey, f"expected a string, got {type(value).__name__}")
        headers[name] = _interpolate(hkey, value, env)
    upstream = _url(f"{key}.upstream", _str(t, key, "upstream", ""))
    if basic_authorization(upstream) is not None and any(
        name.lower() == "authorization" for name in headers
    ):
        raise ConfigError(
            f"{key}.upstream",
            "has user:password@ and headers.Authorization sets credentials too: keep one "
            '(e.g. Authorization = "Basic ${UPSTREAM_BASIC}" and no userinfo)',
        )
    timeout = t.get("timeout_s")
    route = RouteConfig(
        prefix=prefix,
        upstream=upstream,
        format=fmt,
        headers=headers,
        timeout_s=None if timeout is None else _num(t, key, "timeout_s", 0.0, minimum=0.001),
        connect_timeout_s=_num(t, key, "connect_timeout_s", d.connect_timeout_s, minimum=0.001),
        retries=_int(t, key, "retries", d.retries, minimum=0),
        on_disconnect=on_disconnect,
        client_on_disconnect=_bool(t, key, "client_on_disconnect", d.client_on_disconnect),
        read_timeout_s=_num(t, key, "read_timeout_s", d.read_timeout_s, minimum=0.001),
        keepalive_interval_s=_num(
            t, key, "keepalive_interval_s", d.keepalive_interval_s, minimum=0.001
        ),
        allowed_origins=_origins(f"{key}.allowed_origins", t.get("allowed_origins", [])),
        methods=_methods(f"{key}.methods", t.get("methods", list(d.methods))),
        proxy=_proxy(key, t, env),
        tls_ca_file=_optional_str(t, key, "tls_ca_file") or None,
        tls_client_cert=_optional_str(t, key, "tls_client_cert") or None,
        tls_client_key=_optional_str(t, key, "tls_client_key") or None,
        tls_server_name=_optional_str(t, key, "tls_server_name") or None,
        tls_verify=_bool(t, key, "tls_verify", d.tls_verify),
    )
    _egress(key, route)
    return route


_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*")


def _methods(key: str, value: object) -> tuple[str, ...]:
    """A route's ``methods``: upper-case HTTP method tokens, never ``TRACE`` or ``CONNECT``."""
    if not isinstance(value, list) or not value:
        raise ConfigError(key, 'expected a non-empty list of methods (e.g. ["GET", "POST"])')
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not _METHOD.fullmatch(item):
            raise ConfigError(key, f"expected upper-case HTTP method names, got {item!r}")
        if item in NEVER_FORWARDED_METHODS:
            raise ConfigError(
                key, f"{item} is never forwarded (it would expose the route's credentials)"
            )
        if item not in out:
            out.append(item)
    return tuple(out)


def _rechunk(t: Mapping[str, Any]) -> RechunkConfig:
    _no_unknown("rechunk", t, set(RechunkConfig.__dataclass_fields__))
    d = RechunkConfig()
    mode = _choice(t, "rechunk", "mode", d.mode, RechunkMode)
    boundary = _str(t, "rechunk", "flush_boundary", d.flush_boundary)
    flush_boundary = next((b for b in FLUSH_BOUNDARIES if b == boundary), None)
    if flush_boundary is None:
        raise ConfigError(
            "rechunk.flush_boundary",
            f"expected one of {', '.join(repr(b) for b in FLUSH_BOUNDARIES)}, got {boundary!r}",
        )
    return RechunkConfig(
        mode=mode,
        flush_interval_ms=_num(t, "rechunk", "flush_interval_ms", d.flush_interval_ms, minimum=0),
        max_flush_bytes=_int(t, "rechunk", "max_flush_bytes", d.max_flush_bytes, minimum=1),
        max_event_bytes=_int(t, "rechunk", "max_event_bytes", d.max_event_bytes, minimum=64),
        flush_boundary=flush_boundary,
        max_boundary_wait_ms=_num(
            t, "rechunk", "max_boundary_wait_ms", d.max_boundary_wait_ms, minimum=0
        ),
        coalesce_reads=_bool(t, "rechunk", "coalesce_reads", d.coalesce_reads),
    )


def _backpressure(t: Mapping[str, Any]) -> BackpressureConfig:
    _no_unknown("backpressure", t, set(BackpressureConfig.__dataclass_fields__))
    d = BackpressureConfig()
    return BackpressureConfig(
        max_pending_bytes=_int(
            t, "backpressure", "max_pending_bytes", d.max_pending_bytes, minimum=1024
        ),
        stall_timeout_s=_num(
            t, "backpressure", "stall_timeout_s", d.stall_timeout_s, minimum=0.001
        ),
    )


def _resume(t: Mapping[str, Any], env: Mapping[str, str]) -> ResumeConfig:
    _no_unknown("resume", t, set(ResumeConfig.__dataclass_fields__))
    d = ResumeConfig()
    store = _choice(t, "resume", "store", d.store, ResumeStoreKind)
    enabled = t.get("enabled", d.enabled)
    if not isinstance(enabled, bool):
        raise ConfigError("resume.enabled", f"expected true or false, got {enabled!r}")
    redis_url = _interpolate("resume.redis_url", _str(t, "resume", "redis_url", d.redis_url), env)
    _check_authority("resume.redis_url", redis_url)
    if urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            "resume.redis_url",
            f"expected a redis://, rediss:// or unix:// URL, got {redact_url(redis_url)!r}",
        )
    binding_key = _interpolate(
        "resume.binding_key", _str(t, "resume", "binding_key", d.binding_key), env
    )
    if store == "redis" and enabled and not binding_key:
        raise ConfigError(
            "resume.binding_key",
            "required with store = 'redis': every replica sharing the store must bind streams "
            'to callers with the same key (e.g. binding_key = "${STREAMHOP_RESUME_KEY}")',
        )
    binding_headers = t.get("binding_headers", list(d.binding_headers))
    if (
        not isinstance(binding_headers, list)
        or not binding_headers
        or not all(isinstance(h, str) and _TOKEN.fullmatch(h) for h in binding_headers)
    ):
        raise ConfigError("resume.binding_headers", "expected a non-empty array of header names")
    return ResumeConfig(
        enabled=enabled,
        store=store,
        redis_url=redis_url,
        window_s=_num(t, "resume", "window_s", d.window_s, minimum=1),
        max_streams=_int(t, "resume", "max_streams", d.max_streams, minimum=1),
        max_stream_bytes=_int(t, "resume", "max_stream_bytes", d.max_stream_bytes, minimum=1024),
        max_total_bytes=_int(t, "resume", "max_total_bytes", d.max_total_bytes, minimum=1024),
        binding_key=binding_key,
        binding_headers=tuple(h.lower() for h in binding_headers),
        handoff_jitter_ms=_num(t, "resume", "handoff_jitter_ms", d.handoff_jitter_ms, minimum=0),
    )


def _tracing(t: Mapping[str, Any]) -> TracingConfig:
    _no_unknown("tracing", t, set(TracingConfig.__dataclass_fields__))
    d = TracingConfig()
    endpoint = t.get("otlp_endpoint")
    if endpoint is not None:
        endpoint = _url("tracing.otlp_endpoint", _str(t, "tracing", "otlp_endpoint", ""))
    export_metrics = _bool(t, "tracing", "export_metrics", d.export_metrics)
    if export_metrics and endpoint is None:
        raise ConfigError(
            "tracing.export_metrics", "needs tracing.otlp_endpoint (where the metrics go)"
        )
    return TracingConfig(
        otlp_endpoint=endpoint,
        service_name=_str(t, "tracing", "service_name", d.service_name),
        export_metrics=export_metrics,
    )


def _metrics(t: Mapping[str, Any]) -> MetricsConfig:
    _no_unknown("metrics", t, set(MetricsConfig.__dataclass_fields__))
    models = t.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError("metrics.models", "expected an array of model name strings")
    d = MetricsConfig()
    return MetricsConfig(
        models=tuple(models),
        # Gaps at or below the 1 ms window in which a burst's events arrive would make every
        # fast stream a series of bursts.
        burst_gap_ms=_num(t, "metrics", "burst_gap_ms", d.burst_gap_ms, minimum=10),
        # A single event after a gap is a slow provider, not a buffering hop.
        burst_events=_int(t, "metrics", "burst_events", d.burst_events, minimum=2),
    )


# --- value helpers --------------------------------------------------------------------------


def _table(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    t = data.get(name, {})
    if not isinstance(t, dict):
        raise ConfigError(name, f"expected a table ([{name}]), got {type(t).__name__}")
    return t


def _no_unknown(where: str, t: Mapping[str, Any], known: set[str]) -> None:
    for key in t:
        if key not in known:
            dotted = f"{where}.{key}" if where else key
            raise ConfigError(dotted, f"unknown key; expected one of {sorted(known)}")


def _bool(t: Mapping[str, Any], where: str, key: str, default: bool) -> bool:
    value = t.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}", f"expected true or false, got {value!r}")
    return value


_C = TypeVar("_C", bound=str)


def _choice(t: Mapping[str, Any], where: str, key: str, default: _C, kind: Any) -> _C:
    """A string among the values of the ``Literal`` type ``kind`` (the config model's type of
    that key: the allowed values are written once, there)."""
    allowed = get_args(kind)
    value = t.get(key, default)
    if value not in allowed:
        raise ConfigError(
            f"{where}.{key}",
            f"expected one of {', '.join(repr(a) for a in allowed)}, got {value!r}",
        )
    return cast(_C, value)


def _str(t: Mapping[str, Any], where: str, key: str, default: str) -> str:
    value = t.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}", f"expected a string, got {value!r}")
    return value


def _num(t: Mapping[str, Any], where: str, key: str, default: float, *, minimum: float) -> float:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}", f"expected a number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{where}.{key}", f"must be >= {minimum}, got {value}")
    return float(value)


def _int(t: Mapping[str, Any], where: str, key: str, default: int, *, minimum: int) -> int:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}", f"expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{where}.{key}", f"must be >= {minimum}, got {value}")
    return value


def _url(key: str, value: str) -> str:
    """An upstream base URL: scheme, host, optional port and path; no query or fragment (the
    request's path is joined to it, so they would end up in the middle of the URL)."""
    _check_authority(key, value)
    parts = urlsplit(value)
    shown = redact_url(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"expected an http:// or https:// URL, got {shown!r}")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number in 0..65535
    except ValueError:
        raise ConfigError(key, f"invalid port in {shown!r}") from None
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ConfigError(key, f"expected no query or fragment, got {shown!r}")
    return value.rstrip("/")


def _check_authority(key: str, value: str) -> None:
    """Refuse a URL whose credentials could be read, or redacted, other than as they are sent.

    Raises:
        ConfigError: whitespace or a control character in it (a URL in a log line ends at
            whitespace, so its userinfo could not be redacted), it cannot be split, or its
            authority holds more than one unescaped ``@`` (yarl, aiohttp and redis-py take
            everything before the last one as userinfo; a reader may take the first).
    """
    if any(c.isspace() or c < " " or c == "\x7f" for c in value):
        raise ConfigError(
            key, "expected no whitespace or control characters (percent-encode them: %20)"
        )
    try:
        # urllib's split, not yarl's: redis-py parses redis_url with it. It delimits the
        # authority as yarl does (yarl's parser is adapted from it) but, unlike yarl, allows a
        # backslash in a Redis password.
        authority = urlsplit(value).netloc
    except ValueError:
        raise ConfigError(key, f"not a valid URL: {redact_url(value)!r}") from None
    if authority.count("@") > 1:
        raise ConfigError(
            key,
            f"more than one '@' before the host in {redact_url(value)!r}: everything before "
            "the last '@' would be the user name and password; percent-encode an '@' in "
            "them as %40",
        )


def _interpolate(key: str, value: str, env: Mapping[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(key, f"environment variable {name} is not set")
        return env[name]

    return _ENV_REF.sub(sub, value)


def _origins(key: str, value: Any) -> tuple[str, ...]:
    """An array of serialized origins (RFC 6454 §6.2: ``scheme://host[:port]``, no path)."""
    if not isinstance(value, list):
        raise ConfigError(key, 'expected an array of origins, e.g. ["https://app.example.com"]')
    out: list[str] = []
    for i, origin in enumerate(value):
        if not isinstance(origin, str):
            raise ConfigError(f"{key}[{i}]", f"expected a string, got {origin!r}")
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise ConfigError(
                f"{key}[{i}]",
                f"expected an origin such as 'https://app.example.com' (scheme://host[:port]), "
                f"got {origin!r}",
            )
        out.append(origin.rstrip("/").lower())
    return tuple(out)


def _hosts(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(h, str) and h for h in value):
        raise ConfigError(key, 'expected an array of host names, e.g. ["localhost"] or ["*"]')
    out = []
    for i, host in enumerate(value):
        if host != "*" and ("/" in host or " " in host):
            raise ConfigError(f"{key}[{i}]", f"expected a host name without port, got {host!r}")
        out.append(host.strip("[]").lower())
    return tuple(out)
