"""Routing without sockets: :func:`normalise_path` (RFC 3986 §5.2.4 on one decoded path) and
:class:`RouteTable` (longest prefix on segment boundaries; the upstream URL from config only).

The same rules against a real sidecar process: ``tests/sidecar/test_security.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from streamhop.sidecar.admission.guard import PathError, RequestPath, normalise_path
from streamhop.sidecar.admission.routing import RouteTable, raw_path
from streamhop.sidecar.config import RouteConfig, config_from_dict


def _routes(*routes: tuple[str, str]) -> list[RouteConfig]:
    config = config_from_dict(
        {"routes": [{"prefix": prefix, "upstream": upstream} for prefix, upstream in routes]}
    )
    return list(config.routes)


def _url(table: RouteTable, target: str, query: bytes = b"") -> str:
    path = normalise_path(target)
    route = table.match(path)
    assert route is not None, target
    return str(table.upstream_url(route, path, query))


# --- normalise_path ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "decoded", "raw"),
    [
        ("/", ("",), ("",)),
        ("/v1/models", ("v1", "models"), ("v1", "models")),
        ("/v1/models/", ("v1", "models", ""), ("v1", "models", "")),
        # Dot segments go, literal or encoded; a trailing one leaves an empty last segment.
        ("/a/./b", ("a", "b"), ("a", "b")),
        ("/a/%2e/b", ("a", "b"), ("a", "b")),
        ("/a/x/../b", ("a", "b"), ("a", "b")),
        ("/a/x/%2E%2e/b", ("a", "b"), ("a", "b")),
        ("/a/b/..", ("a", ""), ("a", "")),
        ("/a/b/.", ("a", "b", ""), ("a", "b", "")),
        # Decoded once for matching; kept as sent for the upstream.
        ("/%78/v1", ("x", "v1"), ("%78", "v1")),
        ("/v1/models%3Aa", ("v1", "models:a"), ("v1", "models%3Aa")),
        ("/caf%C3%A9", ("café",), ("caf%C3%A9",)),
        ("/caf\xc3\xa9", ("café",), ("caf\xc3\xa9",)),  # raw UTF-8 bytes, read as Latin-1
        ("/%FF", ("\udcff",), ("%FF",)),  # invalid UTF-8 kept as a surrogate escape
        ("/%252F", ("%2F",), ("%252F",)),  # decoded once, not twice
    ],
)
def test_normalise_path(target: str, decoded: tuple[str, ...], raw: tuple[str, ...]) -> None:
    path = normalise_path(target)
    assert path == RequestPath(decoded, raw)
    assert path.text == "/" + "/".join(decoded)


@pytest.mark.parametrize(
    "target",
    [
        "/x/%2F..%2F..",
        "/x/a%2fb",
        "/x/a%5Cb",
        "/x/a%5cb",
        "/..",
        "/%2e%2e",
        "/x/../../v1",
        "/a/%2E%2E/%2e%2e/b",
        "v1/models",
        "",
        "*",
    ],
)
def test_encoded_separators_climbing_and_relative_paths_are_refused(target: str) -> None:
    with pytest.raises(PathError):
        normalise_path(target)


def test_raw_path_prefers_the_bytes_the_client_sent() -> None:
    assert (
        raw_path({"raw_path": b"/a%2Fb/caf\xc3\xa9", "path": "/a/b/café"}) == "/a%2Fb/caf\xc3\xa9"
    )
    assert raw_path({"raw_path": None, "path": "/v1/models"}) == "/v1/models"
    assert raw_path({"path": "/v1/models"}) == "/v1/models"


# --- RouteTable.match ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "prefix"),
    [
        ("/a/b/c", "/a/b"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b"),
        ("/a/bc", "/a"),
        ("/a/x", "/a"),
        ("/a", "/a"),
        ("/ab", "/"),
        ("/z/a/b", "/"),
        ("/", "/"),
        ("/%61/%62/c", "/a/b"),  # matched on the decoded path
        ("/a/x/../b/c", "/a/b"),  # ... after dot segments are gone
    ],
)
def test_longest_prefix_on_segment_boundaries_wins(target: str, prefix: str) -> None:
    table = RouteTable(_routes(("/", "http://root"), ("/a/b", "http://ab"), ("/a", "http://a")))
    route = table.match(normalise_path(target))
    assert route is not None and route.prefix == prefix


def test_no_route_without_a_matching_prefix() -> None:
    table = RouteTable(_routes(("/openai", "http://o"), ("/anthropic", "http://a")))
    for target in ("/", "/openaix", "/open", "/v1/openai", "/%6Fpenai2"):
        assert table.match(normalise_path(target)) is None, target
    assert table.match(normalise_path("/openai")) is not None
    assert table.match(normalise_path("/%6Fpenai/v1")) is not None


def test_a_prefix_with_a_trailing_slash_matches_like_without() -> None:
    table = RouteTable(_routes(("/a/", "http://a")))
    route = table.match(normalise_path("/a/v1"))
    assert route is not None and route.prefix == "/a/"
    assert table.match(normalise_path("/ab")) is None


# --- RouteTable.upstream_url ---------------------------------------------------------------------


def test_upstream_url_is_the_base_then_what_follows_the_prefix() -> None:
    table = RouteTable(
        _routes(
            ("/a", "http://up:8080/base/"), ("/", "https://api.example.com"), ("/b", "http://b")
        )
    )
    assert _url(table, "/a/v1/models") == "http://up:8080/base/v1/models"
    assert _url(table, "/a") == "http://up:8080/base"
    assert _url(table, "/a/") == "http://up:8080/base/"
    assert _url(table, "/v1/chat/completions") == "https://api.example.com/v1/chat/completions"
    assert _url(table, "/b") == "http://b"
    # The client's own escapes are forwarded as sent, after the prefix matched decoded.
    assert _url(table, "/%61/v1/models%3Aa") == "http://up:8080/base/v1/models%3Aa"
    assert _url(table, "/a/x/../v1/models") == "http://up:8080/base/v1/models"


@pytest.mark.parametrize(
    "target",
    [
        "/a//evil.example/x",
        "/a/@evil.example/x",
        "/a/http:%2F%2Fevil.example",
        "/a/..%2F..%2Fevil",
        "/a/%40evil.example:81",
        "/a/evil.example:81/x",
    ],
)
def test_scheme_host_and_port_come_only_from_config(target: str) -> None:
    table = RouteTable(_routes(("/a", "http://user:pw@up:8080/base")))
    try:
        path = normalise_path(target)
    except PathError:
        return  # refused outright is safe too
    route = table.match(path)
    assert route is not None
    url = table.upstream_url(route, path, b"")
    assert (url.scheme, url.raw_host, url.port) == ("http", "up", 8080), url
    # The configured userinfo goes as the route's Authorization header, never in the URL.
    assert (url.raw_user, url.raw_password) == (None, None)
    assert route.upstream_headers == {"Authorization": "Basic dXNlcjpwdw=="}
    assert url.raw_path.startswith("/base/"), url


@pytest.mark.parametrize(
    ("segment", "escaped"),
    [
        ("x y", "x%20y"),
        ("caf\xc3\xa9", "caf%C3%A9"),
        ('a"b<c>', "a%22b%3Cc%3E"),
        ("a?b", "a%3Fb"),
        ("a#b", "a%23b"),
        ("~-._!$&'()*+,;=:@", "~-._!$&'()*+,;=:@"),
        ("%41%zz", "%41%zz"),
    ],
)
def test_path_segments_are_escaped_outside_pchar(segment: str, escaped: str) -> None:
    table = RouteTable(_routes(("/", "http://up")))
    path = RequestPath(decoded=(segment,), raw=(segment,))
    route = table.match(path)
    assert route is not None
    assert table.upstream_url(route, path, b"").raw_path == "/" + escaped


@pytest.mark.parametrize(
    ("query", "sent"),
    [
        (b"", ""),
        (b"x=1&y=%C3%A9", "x=1&y=%C3%A9"),
        (b"q=a b", "q=a%20b"),
        (b"a#b", "a%23b"),
        (b"k=caf\xc3\xa9&z=\xff", "k=caf%C3%A9&z=%FF"),
        (b"a=\x00\x7f", "a=%00%7F"),
        (b"a=1&&b=[2]", "a=1&&b=[2]"),
    ],
)
def test_query_is_forwarded_as_sent_with_unsafe_bytes_escaped(query: bytes, sent: str) -> None:
    table = RouteTable(_routes(("/", "http://up/base")))
    path = normalise_path("/v1/x")
    route = table.match(path)
    assert route is not None
    url = table.upstream_url(route, path, query)
    assert url.raw_query_string == sent
    assert str(url) == "http://up/base/v1/x" + (f"?{sent}" if sent else "")
    assert url.raw_host == "up"


def test_route_order_in_config_does_not_matter() -> None:
    routes: list[tuple[str, str]] = [("/", "http://root"), ("/a", "http://a"), ("/a/b", "http://b")]
    targets: dict[str, Any] = {"/a/b/c": "http://b/c", "/a/c": "http://a/c", "/c": "http://root/c"}
    for order in (routes, routes[::-1], [routes[1], routes[2], routes[0]]):
        table = RouteTable(_routes(*order))
        assert {t: _url(table, t) for t in targets} == targets
