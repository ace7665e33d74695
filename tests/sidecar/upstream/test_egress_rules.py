"""Which proxy a route takes (sidecar/upstream/egress.py): the route's own, else the
environment's with urllib's rules (lower case first, NO_PROXY suffixes, ALL_PROXY), and how a
proxy URL's credentials become a header and disappear from its display."""

from __future__ import annotations

import base64

import pytest

from streamhop.sidecar.config import RouteConfig
from streamhop.sidecar.config.route_egress import EgressError, parse_proxy
from streamhop.sidecar.upstream.egress import route_proxy


def route(upstream: str = "https://api.example.com", proxy: str | None = None) -> RouteConfig:
    return RouteConfig(prefix="/", upstream=upstream, proxy=proxy)


def host_of(upstream: str, environ: dict[str, str], trust_env: bool = True) -> str | None:
    found = route_proxy(route(upstream), trust_env=trust_env, environ=environ)
    return None if found is None else f"{found.host}:{found.port}"


def test_the_scheme_picks_the_variable_and_lower_case_wins() -> None:
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2", "HTTP_PROXY": "p:3"}
    assert host_of("https://api.example.com", env) == "lower:2"
    assert host_of("http://gateway.internal", env) == "p:3"
    assert host_of("https://api.example.com", {"ALL_PROXY": "http://all:4"}) == "all:4"
    assert host_of("https://api.example.com", {}) is None


def test_no_proxy_names_hosts_and_domain_suffixes() -> None:
    env = {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "localhost,.internal,api.example.com"}
    assert host_of("https://api.example.com", env) is None
    assert host_of("https://llm.corp.internal", env) is None
    assert host_of("https://api.other.com", env) == "p:3128"
    assert host_of("https://api.other.com", {**env, "NO_PROXY": "*"}) is None


def test_the_route_decides_before_the_environment() -> None:
    env = {"HTTPS_PROXY": "http://env:1"}
    direct = route_proxy(route(proxy=""), trust_env=True, environ=env)
    assert direct is None
    own = route_proxy(route(proxy="http://own:2"), trust_env=True, environ=env)
    assert own is not None and (own.host, own.port) == ("own", 2)
    assert host_of("https://api.example.com", env, trust_env=False) is None


def test_credentials_become_a_header_and_never_show() -> None:
    proxy = parse_proxy("http://user%40corp:p%3Ass@proxy.corp:3128")
    assert proxy.authorization == b"Basic " + base64.b64encode(b"user@corp:p:ss")
    assert "p%3Ass" not in proxy.display and "***@proxy.corp:3128" in proxy.display
    assert parse_proxy("proxy.corp:8080").port == 8080
    assert parse_proxy("http://proxy.corp").port == 80


@pytest.mark.parametrize("url", ["https://proxy:443", "socks5://proxy:1080", "http://:3128"])
def test_unsupported_proxy_urls_are_refused_with_the_reason(url: str) -> None:
    with pytest.raises(EgressError):
        parse_proxy(url)
