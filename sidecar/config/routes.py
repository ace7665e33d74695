"""The ``[[routes]]`` array: each route's prefix, upstream, headers, timeouts, methods and egress.

``${NAME}`` in a route's ``headers`` and ``proxy`` is replaced from the environment (that is
where provider keys and proxy passwords live). A route's credentials come from one place only:
the upstream URL's userinfo or an ``Authorization`` header, never both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from streamhop.middleware.defaults import FormatName, OnDisconnect
from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config.model import NEVER_FORWARDED_METHODS, RouteConfig, basic_authorization
from streamhop.sidecar.config.readers import (
    interpolate,
    no_unknown,
    optional_str,
    read_bool,
    read_choice,
    read_int,
    read_num,
    read_str,
)
from streamhop.sidecar.config.route_egress import check_route_egress
from streamhop.sidecar.config.urls import base_url, origins

_METHOD: Final = re.compile(r"[A-Z][A-Z0-9_-]*")


def routes_config(raw_routes: object, env: Mapping[str, str]) -> tuple[RouteConfig, ...]:
    """The ``routes`` value of the document, as routes in file order.

    Args:
        raw_routes: the value (an array of tables).
        env: where ``${NAME}`` is looked up.

    Raises:
        ConfigError: not an array of tables, an invalid route (``routes[i].key``), or two
            routes with the same prefix.
    """
    if not isinstance(raw_routes, list):
        raise ConfigError("routes", "expected an array of tables ([[routes]])")
    routes = tuple(_route(f"routes[{i}]", r, env) for i, r in enumerate(raw_routes))
    seen: set[str] = set()
    for i, route in enumerate(routes):
        if route.prefix in seen:
            raise ConfigError(f"routes[{i}].prefix", f"duplicate prefix {route.prefix!r}")
        seen.add(route.prefix)
    return routes


def _route(key: str, t: Any, env: Mapping[str, str]) -> RouteConfig:
    if not isinstance(t, dict):
        raise ConfigError(key, "expected a table")
    no_unknown(key, t, set(RouteConfig.__dataclass_fields__))
    if "prefix" not in t:
        raise ConfigError(f"{key}.prefix", 'missing (e.g. prefix = "/")')
    if "upstream" not in t:
        raise ConfigError(f"{key}.upstream", 'missing (e.g. upstream = "https://api.openai.com")')
    prefix = read_str(t, key, "prefix", "/")
    if not prefix.startswith("/"):
        raise ConfigError(f"{key}.prefix", f"must start with '/', got {prefix!r}")
    d = RouteConfig(prefix="/", upstream="http://x")
    fmt = read_choice(t, key, "format", d.format, FormatName)
    on_disconnect = read_choice(t, key, "on_disconnect", d.on_disconnect, OnDisconnect)
    headers = _headers(key, t.get("headers", {}), env)
    upstream = base_url(f"{key}.upstream", read_str(t, key, "upstream", ""))
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
        timeout_s=None if timeout is None else read_num(t, key, "timeout_s", 0.0, minimum=0.001),
        connect_timeout_s=read_num(t, key, "connect_timeout_s", d.connect_timeout_s, minimum=0.001),
        retries=read_int(t, key, "retries", d.retries, minimum=0),
        on_disconnect=on_disconnect,
        client_on_disconnect=read_bool(t, key, "client_on_disconnect", d.client_on_disconnect),
        client_record=read_bool(t, key, "client_record", d.client_record),
        disconnect_grace_ms=read_int(
            t, key, "disconnect_grace_ms", d.disconnect_grace_ms, minimum=1
        ),
        read_timeout_s=read_num(t, key, "read_timeout_s", d.read_timeout_s, minimum=0.001),
        keepalive_interval_s=read_num(
            t, key, "keepalive_interval_s", d.keepalive_interval_s, minimum=0.001
        ),
        allowed_origins=origins(f"{key}.allowed_origins", t.get("allowed_origins", [])),
        methods=_methods(f"{key}.methods", t.get("methods", list(d.methods))),
        proxy=_proxy(key, t, env),
        tls_ca_file=optional_str(t, key, "tls_ca_file") or None,
        tls_client_cert=optional_str(t, key, "tls_client_cert") or None,
        tls_client_key=optional_str(t, key, "tls_client_key") or None,
        tls_server_name=optional_str(t, key, "tls_server_name") or None,
        tls_verify=read_bool(t, key, "tls_verify", d.tls_verify),
    )
    check_route_egress(key, route)
    return route


def _headers(key: str, raw_headers: object, env: Mapping[str, str]) -> dict[str, str]:
    """A route's ``headers``: a table of strings, each with ``${NAME}`` replaced."""
    if not isinstance(raw_headers, dict):
        raise ConfigError(f"{key}.headers", 'expected a table of header = "value"')
    headers: dict[str, str] = {}
    for name, value in raw_headers.items():
        hkey = f"{key}.headers.{name}"
        if not isinstance(value, str):
            raise ConfigError(hkey, f"expected a string, got {type(value).__name__}")
        headers[name] = interpolate(hkey, value, env)
    return headers


def _proxy(key: str, t: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """A route's ``proxy``, with ``${NAME}`` replaced from the environment (credentials)."""
    value = optional_str(t, key, "proxy")
    return None if value is None else interpolate(f"{key}.proxy", value, env)


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
