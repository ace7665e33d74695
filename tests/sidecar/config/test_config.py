"""Config unit tests: the example file is complete and loads; new keys validate with the key
named in the error."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import get_args

import pytest

from streamhop.middleware.controls import MODES
from streamhop.middleware.defaults import FormatName, RechunkMode
from streamhop.middleware.errors import ConfigError
from streamhop.middleware.rechunk.formats import FORMAT_NAMES
from streamhop.sidecar.config import (
    BackpressureConfig,
    RechunkConfig,
    ResumeConfig,
    RouteConfig,
    ServerConfig,
    TracingConfig,
    config_from_dict,
    effective_allowed_hosts,
    load_config,
    redact_url,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "config.example.toml"


def test_example_config_loads_and_documents_every_key() -> None:
    load_config(EXAMPLE, {"CEREBRAS_API_KEY": "k"})
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    sections = {
        "server": ServerConfig,
        "rechunk": RechunkConfig,
        "backpressure": BackpressureConfig,
        "resume": ResumeConfig,
        "tracing": TracingConfig,
    }
    for section, cls in sections.items():
        for f in dataclasses.fields(cls):
            assert f"{f.name} =" in text, f"[{section}] {f.name} is not in config.example.toml"
        assert section in data
    for f in dataclasses.fields(RouteConfig):
        assert f"{f.name} =" in text or f.name == "headers", f"routes.{f.name} undocumented"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"server": {"allowed_origins": ["https://a.example/path"]}}, "server.allowed_origins[0]"),
        ({"server": {"allowed_origins": "https://a.example"}}, "server.allowed_origins"),
        ({"server": {"allowed_hosts": ["a.example:80/x"]}}, "server.allowed_hosts[0]"),
        ({"server": {"max_headers": 2}}, "server.max_headers"),
        ({"server": {"header_timeout_s": 0}}, "server.header_timeout_s"),
        ({"resume": {"binding_headers": []}}, "resume.binding_headers"),
        ({"rechunk": {"coalesce_reads": "yes"}}, "rechunk.coalesce_reads"),
        ({"routes": [{"prefix": "/", "upstream": "https://h", "proxy": "https://p:1"}]}, "proxy"),
        ({"routes": [{"prefix": "/", "upstream": "http://h", "tls_ca_file": "/x"}]}, "tls_ca"),
        ({"routes": [{"prefix": "/", "upstream": "https://h", "tls_ca_file": "/no"}]}, "tls_ca"),
        ({"server": {"tls_cert_file": "/no.crt", "tls_key_file": "/no.key"}}, "tls_cert_file"),
        ({"resume": {"enabled": True, "store": "redis"}}, "resume.binding_key"),
        ({"routes": [{"prefix": "/", "upstream": "http://h/x?q=1"}]}, "routes[0].upstream"),
        ({"routes": [{"prefix": "/", "upstream": "http://h:99999"}]}, "routes[0].upstream"),
        ({"routes": [{"prefix": "/", "upstream": "http://h", "read_timeout_s": 0}]}, "routes[0]"),
    ],
)
def test_invalid_values_name_their_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert key in str(info.value)


def test_allowed_hosts_default_follows_the_listen_address() -> None:
    loopback = config_from_dict({}).server
    assert effective_allowed_hosts(loopback) == {"127.0.0.1", "localhost", "::1"}
    anywhere = config_from_dict({"server": {"listen": "0.0.0.0:8787"}}).server
    assert effective_allowed_hosts(anywhere) is None
    star = config_from_dict({"server": {"allowed_hosts": ["*"]}}).server
    assert effective_allowed_hosts(star) is None
    listed = config_from_dict({"server": {"allowed_hosts": ["Gateway.NS.svc"]}}).server
    assert effective_allowed_hosts(listed) == {"gateway.ns.svc"}


def test_binding_key_takes_env_interpolation() -> None:
    config = config_from_dict(
        {"resume": {"binding_key": "${K}", "store": "redis", "enabled": True}}, {"K": "s"}
    )
    assert config.resume.binding_key == "s"


def test_redact_url() -> None:
    assert redact_url("http://u:p@h:1/x") == "http://***@h:1/x"
    assert redact_url("failed: redis://:pw@r:6379/0 down") == "failed: redis://***@r:6379/0 down"
    assert redact_url("http://h/x") == "http://h/x"


def test_redis_url_takes_env_interpolation() -> None:
    config = config_from_dict({"resume": {"redis_url": "redis://:${PW}@r:6379/0"}}, {"PW": "p4ss"})
    assert config.resume.redis_url == "redis://:p4ss@r:6379/0"


def test_detach_needs_resume_and_resume_is_accepted() -> None:
    route = {"prefix": "/", "upstream": "http://127.0.0.1:1", "on_disconnect": "detach"}
    with pytest.raises(ConfigError, match=r"routes\[0\]\.on_disconnect"):
        config_from_dict({"routes": [route]})
    config = config_from_dict(
        {"routes": [route], "resume": {"enabled": True, "store": "redis", "binding_key": "k"}}
    )
    assert config.resume.enabled and config.routes[0].on_disconnect == "detach"
    with pytest.raises(ConfigError, match=r"resume\.redis_url"):
        config_from_dict({"routes": [], "resume": {"redis_url": "http://x"}})


def test_a_route_proxy_takes_env_interpolation_and_is_redacted_in_errors() -> None:
    route = {"prefix": "/", "upstream": "https://h", "proxy": "http://u:${PROXY_PW}@p:3128"}
    config = config_from_dict({"routes": [route]}, {"PROXY_PW": "s3cret"})
    assert config.routes[0].proxy == "http://u:s3cret@p:3128"
    with pytest.raises(ConfigError) as info:
        config_from_dict({"routes": [{**route, "proxy": "ftp://u:s3cret@p"}]})
    assert "s3cret" not in str(info.value) and "***@p" in str(info.value)


def test_the_literal_types_name_what_the_code_accepts() -> None:
    """One source: the config model's ``Literal`` types are the allowed values; the format
    registry and the control headers agree with them."""
    assert set(get_args(FormatName)) == set(FORMAT_NAMES)
    assert get_args(RechunkMode) == MODES
    with pytest.raises(ConfigError, match=r"rechunk\.mode.*'coalesce', 'passthrough'"):
        config_from_dict({"rechunk": {"mode": "fast"}})
    with pytest.raises(ConfigError, match=r"resume\.store.*'memory', 'redis'"):
        config_from_dict({"resume": {"store": "disk"}})
