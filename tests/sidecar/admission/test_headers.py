"""Which headers cross the proxy, without sockets: hop-by-hop headers (RFC 9110 §7.6.1) and those
``Connection`` names are dropped both ways, ``X-Streamhop-*`` control headers are read and never
forwarded, header values pass byte for byte, and ``Access-Control-*`` from upstream never reaches
the client.

The same rules against a real sidecar process: ``tests/sidecar/http/test_proxy_http.py``.
"""

from __future__ import annotations

import pytest

from streamhop.middleware.controls import ControlHeaderError, Controls
from streamhop.sidecar.admission.headers import (
    HOP_BY_HOP,
    HeaderValueError,
    merge_route_headers,
    response_headers,
    upstream_request_headers,
)

HOP_BY_HOP_REQUEST = [
    (b"connection", b"keep-alive, X-Drop-Me"),
    (b"proxy-connection", b"keep-alive"),
    (b"keep-alive", b"timeout=5"),
    (b"te", b"trailers"),
    (b"trailer", b"x-checksum"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"h2c"),
    (b"x-drop-me", b"named by Connection"),
]


# --- request headers -----------------------------------------------------------------------------


def test_end_to_end_headers_are_forwarded_in_order_with_duplicates() -> None:
    forward, controls = upstream_request_headers(
        [
            (b"authorization", b"Bearer client-key"),
            (b"accept", b"text/event-stream"),
            (b"x-custom", b"one"),
            (b"x-custom", b"two"),
            (b"last-event-id", b"abc:3"),
        ]
    )
    assert forward == [
        ("authorization", "Bearer client-key"),
        ("accept", "text/event-stream"),
        ("x-custom", "one"),
        ("x-custom", "two"),
        ("last-event-id", "abc:3"),
    ]
    assert controls == Controls()


def test_hop_by_hop_connection_named_host_and_length_are_dropped() -> None:
    forward, _ = upstream_request_headers(
        [
            (b"host", b"127.0.0.1:8787"),
            (b"content-length", b"2"),
            *HOP_BY_HOP_REQUEST,
            (b"x-kept", b"yes"),
        ]
    )
    assert forward == [("x-kept", "yes")]
    assert {name for name, _ in HOP_BY_HOP_REQUEST} >= HOP_BY_HOP


def test_connection_tokens_are_matched_in_any_case_and_spacing() -> None:
    forward, _ = upstream_request_headers(
        [
            (b"connection", b"X-One ,x-TWO"),
            (b"connection", b" x-three"),
            (b"x-one", b"1"),
            (b"x-two", b"2"),
            (b"x-three", b"3"),
            (b"x-four", b"4"),
        ]
    )
    assert forward == [("x-four", "4")]


def test_control_headers_are_read_and_never_forwarded() -> None:
    forward, controls = upstream_request_headers(
        [
            (b"x-streamhop-flush-interval-ms", b"5"),
            (b"x-streamhop-mode", b"passthrough"),
            (b"x-streamhop-timeout-ms", b"1500"),
            (b"x-streamhop-something-new", b"ignored but not forwarded"),
            (b"X-Streamhop-Mode", b"passthrough"),
            (b"x-streamhopper", b"not a control header"),
        ]
    )
    assert forward == [("x-streamhopper", "not a control header")]
    assert controls == Controls(flush_interval_ms=5.0, mode="passthrough", timeout_ms=1500.0)


def test_an_invalid_control_header_is_refused() -> None:
    with pytest.raises(ControlHeaderError, match="X-Streamhop-Mode"):
        upstream_request_headers([(b"x-streamhop-mode", b"turbo")])


def test_utf8_values_are_forwarded_byte_for_byte() -> None:
    raw = b"caf\xc3\xa9 \xe2\x80\xa6 \xf0\x9f\x91\xa9"
    forward, _ = upstream_request_headers([(b"x-note", raw), (b"x-ascii", b"plain")])
    assert forward == [("x-note", "café … 👩"), ("x-ascii", "plain")]
    # The client library writes header values as UTF-8: the provider gets the same bytes.
    assert forward[0][1].encode("utf-8") == raw


@pytest.mark.parametrize("value", [b"caf\xe9", b"\xff\xfe", b"ok \xc3"])
def test_values_that_are_not_utf8_are_refused_naming_the_header(value: bytes) -> None:
    with pytest.raises(HeaderValueError, match="'x-note'"):
        upstream_request_headers([(b"x-fine", b"1"), (b"x-note", value)])


# --- response headers ----------------------------------------------------------------------------


def test_response_headers_drop_hop_by_hop_and_connection_named_keep_the_rest() -> None:
    upstream = [
        (b"Content-Type", b"text/event-stream"),
        (b"Connection", b"keep-alive, X-Internal"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"X-Internal", b"secret"),
        (b"Set-Cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"X-Request-Id", b"r1"),
    ]
    assert response_headers(upstream) == [
        (b"content-type", b"text/event-stream"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"x-request-id", b"r1"),
    ]


def test_response_headers_never_pass_access_control() -> None:
    upstream = [
        (b"Access-Control-Allow-Origin", b"*"),
        (b"access-control-allow-credentials", b"true"),
        (b"ACCESS-CONTROL-EXPOSE-HEADERS", b"x-secret"),
        (b"access-control-max-age", b"86400"),
        (b"vary", b"Accept-Encoding"),
    ]
    assert response_headers(upstream) == [(b"vary", b"Accept-Encoding")]


def test_response_headers_drop_what_the_caller_names() -> None:
    upstream = [(b"Content-Length", b"42"), (b"Content-Type", b"text/event-stream")]
    assert response_headers(upstream, drop=frozenset({b"content-length"})) == [
        (b"content-type", b"text/event-stream")
    ]
    assert response_headers(upstream) == [
        (b"content-length", b"42"),
        (b"content-type", b"text/event-stream"),
    ]


# --- route headers -------------------------------------------------------------------------------


def test_route_headers_replace_same_named_client_headers() -> None:
    forward = [("authorization", "Bearer client"), ("x-a", "1"), ("Authorization", "Bearer 2")]
    merged = merge_route_headers(forward, {"Authorization": "Bearer route-key", "X-New": "n"})
    assert merged == [("x-a", "1"), ("Authorization", "Bearer route-key"), ("X-New", "n")]
    assert merge_route_headers(forward, {}) is forward
