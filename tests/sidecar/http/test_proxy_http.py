"""The sidecar's HTTP surface, against the real ``streamhop serve`` process and a real aiohttp
upstream: what is forwarded, what is stripped, what is answered, and what passes untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from tests.sidecar.upstreams import GZIP_BODY, PLAIN_BODY
from tests.support import BackgroundAiohttp, StreamhopProcess, serve


def _raw_get(url: str) -> httpx2.Response:
    # No automatic decompression: compare the bytes on the wire.
    with httpx2.Client(timeout=10) as http:
        request = http.build_request("GET", url, headers={"Accept-Encoding": "gzip"})
        response = http.send(request, stream=True)
        response.raw = b"".join(response.iter_raw())  # type: ignore[attr-defined]
        response.close()
        return response


def test_non_streaming_bodies_are_byte_identical(
    scripted_upstream: BackgroundAiohttp, sidecar: StreamhopProcess
) -> None:
    for path, expected in (("/bytes/plain", PLAIN_BODY), ("/bytes/gzip", GZIP_BODY)):
        direct = _raw_get(scripted_upstream.url + path)
        proxied = _raw_get(sidecar.url + path)
        assert direct.raw == expected  # type: ignore[attr-defined]
        assert proxied.raw == expected  # type: ignore[attr-defined]
        assert proxied.headers.get("content-encoding") == direct.headers.get("content-encoding")
        assert proxied.headers["content-length"] == str(len(expected))
        assert proxied.headers["content-type"] == direct.headers["content-type"]


def test_request_headers_forwarded_control_and_hop_by_hop_stripped(
    sidecar: StreamhopProcess,
) -> None:
    with httpx2.Client(timeout=10) as http:
        response = http.post(
            sidecar.url + "/echo/v1/chat/completions?x=1&y=%C3%A9",
            content=b'{"model": "m"}',
            headers={
                "Authorization": "Bearer client-key",
                "X-Custom": "kept",
                "X-Streamhop-Flush-Interval-Ms": "5",
                "X-Streamhop-Mode": "passthrough",
                "Connection": "keep-alive, X-Drop-Me",
                "X-Drop-Me": "hop-by-hop because Connection names it",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
            },
        )
    assert response.status_code == 200
    echoed = response.json()
    names = {name for name, _ in echoed["headers"]}
    headers = dict(echoed["headers"])
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/echo/v1/chat/completions"
    assert echoed["raw_path"] == "/echo/v1/chat/completions?x=1&y=%C3%A9"
    assert echoed["body"] == '{"model": "m"}'
    assert headers["authorization"] == "Bearer client-key"
    assert headers["x-custom"] == "kept"
    assert not any(name.startswith("x-streamhop-") for name in names)
    assert not names & {"x-drop-me", "keep-alive", "te"}


def test_route_headers_replace_client_headers_with_env_secret(sidecar: StreamhopProcess) -> None:
    with httpx2.Client(timeout=10) as http:
        response = http.get(
            sidecar.url + "/with-key/anything", headers={"Authorization": "Bearer client"}
        )
    echoed = response.json()
    auths = [v for k, v in echoed["headers"] if k == "authorization"]
    assert auths == ["Bearer sk-test-123"]
    assert echoed["path"] == "/echo/anything"


def test_upstream_error_status_and_body_pass_through(sidecar: StreamhopProcess) -> None:
    with httpx2.Client(timeout=10) as http:
        direct_missing = http.post(sidecar.url + "/sim/v1/no-such-endpoint", json={})
    assert direct_missing.status_code == 404
    assert "error" in direct_missing.json()


def test_unreachable_upstream_is_502_json_in_provider_format(sidecar: StreamhopProcess) -> None:
    with httpx2.Client(timeout=20) as http:
        openai_style = http.post(sidecar.url + "/down/v1/chat/completions", json={"stream": True})
        anthropic_style = http.post(sidecar.url + "/down/v1/messages", json={"stream": True})
    assert openai_style.status_code == 502
    assert openai_style.json()["error"]["code"] == "upstream_connect"
    assert anthropic_style.status_code == 502
    body = anthropic_style.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"


def test_bad_control_header_is_400(sidecar: StreamhopProcess) -> None:
    with httpx2.Client(timeout=10) as http:
        response = http.post(
            sidecar.url + "/echo/x", json={}, headers={"X-Streamhop-Mode": "turbo"}
        )
    assert response.status_code == 400
    assert "X-Streamhop-Mode" in response.json()["error"]["message"]


def test_unknown_route_is_404_and_health_endpoints(
    scripted_upstream: BackgroundAiohttp, tmp_path: Path
) -> None:
    config = f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[[routes]]
prefix = "/only"
upstream = "{scripted_upstream.url}/echo"
"""
    proc = serve(tmp_path, config)
    try:
        with httpx2.Client(timeout=10) as http:
            missing = http.get(proc.url + "/v1/models")
            routed = http.get(proc.url + "/only/v1/models")
            not_prefix = http.get(proc.url + "/onlyx")
            assert proc.admin_url is not None
            healthz = http.get(proc.admin_url + "/healthz")
            readyz = http.get(proc.admin_url + "/readyz")
            metrics = http.get(proc.admin_url + "/metrics")
    finally:
        code = proc.stop()
    assert missing.status_code == 404
    assert "no route" in missing.json()["error"]["message"]
    assert routed.status_code == 200 and routed.json()["path"] == "/echo/v1/models"
    assert not_prefix.status_code == 404
    assert healthz.status_code == 200
    assert readyz.status_code == 200
    assert metrics.status_code == 200
    assert code == 0


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[[routes]]\nprefix = "/"\nupstream = "api.example.com"\n', "routes[0].upstream"),
        ('[[routes]]\nprefix = "/"\nupstream = "http://x"\nformat = "xml"\n', "routes[0].format"),
        (
            '[rechunk]\nflush_interval_ms = -1\n[[routes]]\nprefix="/"\nupstream="http://x"\n',
            "rechunk.flush_interval_ms",
        ),
        (
            '[server]\nlisten = "nowhere"\n[[routes]]\nprefix="/"\nupstream="http://x"\n',
            "server.listen",
        ),
        ("[rechunk]\nflush_ms = 5\n", "rechunk.flush_ms"),
        (
            '[[routes]]\nprefix = "/"\nupstream = "http://x"\n'
            '[routes.headers]\nA = "${NOPE_UNSET}"\n',
            "routes[0].headers.A",
        ),
        ("[server\n", "<file>"),
        ("", "routes"),
    ],
)
def test_invalid_config_fails_at_start_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = subprocess.run(
        [sys.executable, "-m", "streamhop.sidecar.cli", "serve", "--config", str(config)],
        capture_output=True,
        timeout=30,
        text=True,
    )
    assert result.returncode == 2
    assert f"invalid config {key}:" in result.stderr
