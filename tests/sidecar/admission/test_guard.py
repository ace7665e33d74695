"""Who may call, without sockets: ``Host`` against the allowed names (DNS rebinding), ``Origin``
and ``Sec-Fetch-Site`` against ``allowed_origins``, and the CORS headers streamhop answers with.

The same rules against a real sidecar process: ``tests/sidecar/test_security.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from streamhop.sidecar.admission.guard import (
    EXPOSED_HEADERS,
    NO_BROWSER,
    PREFLIGHT_MAX_AGE_S,
    BrowserCheck,
    check_browser,
    cors_headers,
    host_allowed,
    preflight_headers,
)
from streamhop.sidecar.config import RouteConfig, ServerConfig, config_from_dict

APP = "https://app.example.com"
ROUTE_ONLY = "http://localhost:5173"


def _server(**server: Any) -> ServerConfig:
    return config_from_dict({"server": server}).server


def _route(**route: Any) -> RouteConfig:
    config = config_from_dict({"routes": [{"prefix": "/", "upstream": "http://up", **route}]})
    return config.routes[0]


# --- Host ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        (b"127.0.0.1:8787", True),
        (b"127.0.0.1", True),
        (b"localhost:8787", True),
        (b"LocalHost", True),
        (b" localhost:1 ", True),
        (b"[::1]:8787", True),
        (b"[::1]", True),
        (b"rebind.evil.example:8787", False),
        (b"evil.example", False),
        (b"127.0.0.2:8787", False),
        (b"localhost.evil.example", False),
        (b"[::1", False),
        (b"::1", False),  # an IPv6 address must be bracketed: "::1:8787" has no port
        (b"127.0.0.1:8787@rebind.evil.example", False),  # exactly a host and a port
        (b"[::1]rebind.evil.example", False),
        (b"", False),
    ],
)
def test_loopback_listener_answers_only_to_loopback_names(host: bytes, allowed: bool) -> None:
    server = _server()  # listens on 127.0.0.1 by default
    assert host_allowed(server, [(b"accept", b"*/*"), (b"host", host)]) is allowed


def test_request_without_host_passes() -> None:
    assert host_allowed(_server(), [(b"accept", b"*/*")]) is True


def test_listener_on_another_address_answers_to_any_host() -> None:
    server = _server(listen="0.0.0.0:8787")
    assert host_allowed(server, [(b"host", b"gateway.ns.svc:8787")]) is True
    assert host_allowed(_server(allowed_hosts=["*"]), [(b"host", b"anything")]) is True


def test_allowed_hosts_replace_the_loopback_names() -> None:
    server = _server(allowed_hosts=["Gateway.NS.svc"])
    assert host_allowed(server, [(b"host", b"gateway.ns.svc:80")]) is True
    assert host_allowed(server, [(b"host", b"GATEWAY.ns.SVC")]) is True
    assert host_allowed(server, [(b"host", b"localhost")]) is False


# --- Origin and Sec-Fetch-Site -------------------------------------------------------------------


def test_without_origin_or_fetch_metadata_it_is_not_a_browser_matter() -> None:
    check = check_browser(_server(), _route(), "POST", [(b"content-type", b"application/json")])
    assert check is NO_BROWSER
    assert check.refused is None and check.origin is None and not check.preflight


@pytest.mark.parametrize("site", [b"cross-site", b"same-site", b" Cross-Site "])
def test_a_load_from_another_site_without_origin_is_refused(site: bytes) -> None:
    check = check_browser(_server(), _route(), "GET", [(b"sec-fetch-site", site)])
    assert check.refused is not None and "Sec-Fetch-Site" in check.refused


@pytest.mark.parametrize("site", [b"same-origin", b"none"])
def test_a_same_origin_or_typed_in_load_passes(site: bytes) -> None:
    assert check_browser(_server(), _route(), "GET", [(b"sec-fetch-site", site)]) is NO_BROWSER


def test_origin_not_allowed_is_refused_naming_it() -> None:
    for server in (_server(), _server(allowed_origins=[APP])):
        check = check_browser(server, _route(), "POST", [(b"origin", b"https://evil.example")])
        assert check.refused is not None and "'https://evil.example'" in check.refused
        assert check.origin is None


def test_origin_allowed_by_server_or_route_is_kept_as_sent() -> None:
    server = _server(allowed_origins=[APP])
    route = _route(allowed_origins=[ROUTE_ONLY])
    for origin in (APP.encode(), b"HTTPS://App.Example.COM", ROUTE_ONLY.encode()):
        check = check_browser(server, route, "POST", [(b"origin", origin)])
        assert check == BrowserCheck(origin=origin), origin
    # A route's origin is allowed on that route only.
    refused = check_browser(server, _route(), "POST", [(b"origin", ROUTE_ONLY.encode())])
    assert refused.refused is not None


def test_preflight_is_recognised_with_what_it_asks_for() -> None:
    server = _server(allowed_origins=[APP])
    headers = [
        (b"origin", APP.encode()),
        (b"access-control-request-method", b" POST "),
        (b"access-control-request-headers", b"authorization, content-type"),
    ]
    check = check_browser(server, _route(), "OPTIONS", headers)
    assert check == BrowserCheck(
        origin=APP.encode(),
        preflight=True,
        request_method=b"POST",
        request_headers=b"authorization, content-type",
    )
    # OPTIONS without Access-Control-Request-Method is an ordinary request.
    plain = check_browser(server, _route(), "OPTIONS", headers[:1])
    assert plain.refused is None and not plain.preflight
    # So is a POST that carries the header.
    post = check_browser(server, _route(), "POST", headers)
    assert post.refused is None and not post.preflight


@pytest.mark.parametrize(
    ("method", "requested"),
    [
        (b"POST", b"authorization\r\nx-injected: 1"),
        (b"POST", b"x(y)"),
        (b"PO\nST", b""),
        (b"POST;", b"authorization"),
    ],
)
def test_preflight_with_invalid_tokens_is_refused(method: bytes, requested: bytes) -> None:
    headers = [
        (b"origin", APP.encode()),
        (b"access-control-request-method", method),
        (b"access-control-request-headers", requested),
    ]
    check = check_browser(_server(allowed_origins=[APP]), _route(), "OPTIONS", headers)
    assert check.refused is not None


# --- the CORS headers streamhop sends ------------------------------------------------------------


def test_cors_headers_of_an_allowed_request() -> None:
    check = BrowserCheck(origin=APP.encode())
    assert cors_headers(check) == [
        (b"access-control-allow-origin", APP.encode()),
        (b"access-control-expose-headers", EXPOSED_HEADERS),
        (b"vary", b"Origin"),
    ]
    exposed = {name.strip() for name in EXPOSED_HEADERS.split(b",")}
    assert {b"x-streamhop-stream-id", b"server-timing", b"retry-after"} <= exposed


def test_preflight_headers_echo_what_was_asked_for() -> None:
    check = BrowserCheck(
        origin=APP.encode(),
        preflight=True,
        request_method=b"POST",
        request_headers=b"authorization, content-type",
    )
    headers = preflight_headers(check)
    assert dict(headers) == {
        b"access-control-allow-origin": APP.encode(),
        b"access-control-allow-methods": b"POST",
        b"access-control-max-age": str(PREFLIGHT_MAX_AGE_S).encode(),
        b"vary": b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        b"content-length": b"0",
        b"access-control-allow-headers": b"authorization, content-type",
    }
    assert len(headers) == len(dict(headers))


def test_preflight_headers_without_requested_headers_or_method() -> None:
    headers = dict(preflight_headers(BrowserCheck(origin=APP.encode(), preflight=True)))
    assert headers[b"access-control-allow-methods"] == b"POST"
    assert b"access-control-allow-headers" not in headers
    blank = BrowserCheck(origin=APP.encode(), preflight=True, request_headers=b"  ")
    assert b"access-control-allow-headers" not in dict(preflight_headers(blank))
