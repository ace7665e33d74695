"""Egress in company networks (docs/config.md, "Egress proxy and TLS"): a real forward proxy
(Debian's tinyproxy) started on a loopback port, an HTTPS upstream (aiohttp with certificates
from a local trustme CA, optionally requiring a client certificate), the real sidecar process,
and the official openai SDK. Every wait is bounded.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trustme

from tests.sidecar.upstreams import fixture_events, make_app, wait_closed
from tests.support import (
    BackgroundAiohttp,
    StreamhopProcess,
    chat_text,
    free_port,
    refuses_connections,
    serve,
    sidecar_config,
    sse_data,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tinyproxy") is None, reason="needs Debian's tinyproxy"),
]

FIXTURE = "openai_chat_text_include_usage"
KEY = "sk-egress-test-key-0123456789"
BOUND_S = 20.0


class Tinyproxy:
    """``tinyproxy -d`` on a free loopback port with a config of our own; its log is kept."""

    def __init__(self, directory: Path, extra: str = "") -> None:
        self.port = free_port()
        self.log = directory / f"tinyproxy-{self.port}.log"
        conf = directory / f"tinyproxy-{self.port}.conf"
        conf.write_text(
            f"Port {self.port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Connect\n"
            f'LogFile "{self.log}"\nMaxClients 100\nAllow 127.0.0.1\nDisableViaHeader Yes\n' + extra
        )
        self.proc = subprocess.Popen(
            ["tinyproxy", "-d", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: not refuses_connections(self.url) or self.proc.poll() is not None,
            BOUND_S,
            "tinyproxy to listen",
        )
        assert self.proc.poll() is None, "tinyproxy exited"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The local CA's bundle and a client certificate it issued, as PEM files."""
    directory = tmp_path_factory.mktemp("pki")
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("streamhop-client@example.com")
    client_cert = directory / "client.pem"
    client_key = directory / "client.key"
    client.cert_chain_pems[0].write_to_path(str(client_cert))
    client.private_key_pem.write_to_path(str(client_key))
    return {"ca": ca_file, "client_cert": client_cert, "client_key": client_key}


def tls_upstream(ca: trustme.CA, *names: str, client_ca: trustme.CA | None = None) -> Any:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return BackgroundAiohttp(make_app(), ssl_context=context)


@pytest.fixture(scope="module")
def upstream(ca: trustme.CA) -> Iterator[str]:
    with tls_upstream(ca, "127.0.0.1", "localhost") as server:
        yield server.url


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tinyproxy]:
    tp = Tinyproxy(tmp_path_factory.mktemp("tinyproxy"))
    yield tp
    tp.stop()


def sidecar(tmp: Path, upstream: str, route: str = "", env: dict[str, str] | None = None) -> Any:
    headers = f'\n[routes.headers]\nAuthorization = "Bearer {KEY}"\n'
    return serve(tmp, sidecar_config(upstream, route=route + headers), env=env)


def sdk_text(proc: StreamhopProcess) -> str:
    with openai.OpenAI(
        base_url=f"{proc.url}/fx/{FIXTURE}/pace/0/v1", api_key="unused", max_retries=0, timeout=30
    ) as client:
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def recorded_text() -> str:
    return chat_text(sse_data(b"".join(fixture_events(FIXTURE))))


def post(proc: StreamhopProcess, path: str = f"/fx/{FIXTURE}/pace/0/v1/chat/completions") -> Any:
    return httpx.post(proc.url + path, json={"model": "m", "stream": True}, timeout=BOUND_S)


def toml_path(path: Path) -> str:
    return str(path).replace("\\", "\\\\")


def test_https_through_the_proxy_is_a_connect_tunnel(
    tmp_path: Path, upstream: str, proxy: Tinyproxy, pki: dict[str, Path]
) -> None:
    route = f'proxy = "{proxy.url}"\ntls_ca_file = "{toml_path(pki["ca"])}"'
    proc = sidecar(tmp_path, upstream, route)
    try:
        assert sdk_text(proc) == recorded_text()
    finally:
        proc.stop()
    port = upstream.rsplit(":", 1)[1]
    log = proxy.text()
    assert f"CONNECT 127.0.0.1:{port}" in log
    assert "/fx/" not in log and KEY not in log  # the path and the key stayed in the tunnel


def test_the_environment_proxy_is_used_unless_no_proxy_names_the_host(
    tmp_path: Path, upstream: str, proxy: Tinyproxy, pki: dict[str, Path]
) -> None:
    route = f'tls_ca_file = "{toml_path(pki["ca"])}"'
    port = upstream.rsplit(":", 1)[1]
    before = proxy.text().count(f"CONNECT 127.0.0.1:{port}")
    proc = sidecar(tmp_path, upstream, route, env={"HTTPS_PROXY": proxy.url, "NO_PROXY": ""})
    try:
        assert sdk_text(proc) == recorded_text()
    finally:
        proc.stop()
    tunnelled = proxy.text().count(f"CONNECT 127.0.0.1:{port}")
    assert tunnelled == before + 1
    proc = sidecar(
        tmp_path, upstream, route, env={"https_proxy": proxy.url, "no_proxy": "127.0.0.1"}
    )
    try:
        assert sdk_text(proc) == recorded_text()
    finally:
        proc.stop()
    assert proxy.text().count(f"CONNECT 127.0.0.1:{port}") == tunnelled  # direct this time


def test_a_route_proxy_of_empty_string_goes_direct(
    tmp_path: Path, upstream: str, proxy: Tinyproxy, pki: dict[str, Path]
) -> None:
    route = f'proxy = ""\ntls_ca_file = "{toml_path(pki["ca"])}"'
    port = upstream.rsplit(":", 1)[1]
    before = proxy.text().count(f"CONNECT 127.0.0.1:{port}")
    proc = sidecar(tmp_path, upstream, route, env={"HTTPS_PROXY": proxy.url})
    try:
        assert sdk_text(proc) == recorded_text()
    finally:
        proc.stop()
    assert proxy.text().count(f"CONNECT 127.0.0.1:{port}") == before


def test_a_plain_http_upstream_goes_to_the_proxy_in_absolute_form(
    tmp_path: Path, proxy: Tinyproxy
) -> None:
    with BackgroundAiohttp(make_app()) as plain:
        proc = sidecar(tmp_path, plain.url, f'proxy = "{proxy.url}"')
        try:
            assert sdk_text(proc) == recorded_text()
        finally:
            proc.stop()
        assert f"POST {plain.url}/fx/{FIXTURE}" in proxy.text()


def test_proxy_credentials_are_sent_and_never_shown(
    tmp_path: Path, upstream: str, pki: dict[str, Path]
) -> None:
    secret = f"pw-{uuid.uuid4().hex[:12]}"
    trust = f'tls_ca_file = "{toml_path(pki["ca"])}"'
    tp = Tinyproxy(tmp_path, extra=f"BasicAuth streamhop {secret}\n")
    try:
        ok = f"http://streamhop:{secret}@127.0.0.1:{tp.port}"
        bad = f"http://streamhop:wrong-{secret}@127.0.0.1:{tp.port}"
        proc = sidecar(tmp_path, upstream, f'proxy = "{ok}"\n{trust}')
        try:
            assert sdk_text(proc) == recorded_text()
        finally:
            proc.stop()
        proc = sidecar(tmp_path, upstream, f'proxy = "{bad}"\nretries = 0\n{trust}')
        try:
            response = post(proc)
            assert response.status_code == 502
            message = response.json()["error"]["message"]
            # tinyproxy answers 401 where RFC 9110 says 407; the proxy's status is reported.
            assert "refused CONNECT" in message and re.search(r"HTTP 40[17] ", message)
        finally:
            proc.stop()
        assert secret not in response.text and secret not in proc.stderr
    finally:
        tp.stop()


def test_a_refused_connect_names_the_status(tmp_path: Path, upstream: str) -> None:
    tp = Tinyproxy(tmp_path, extra="ConnectPort 443\n")  # our upstream is not on 443
    try:
        proc = sidecar(tmp_path, upstream, f'proxy = "{tp.url}"\nretries = 0')
        try:
            response = post(proc)
        finally:
            proc.stop()
    finally:
        tp.stop()
    assert response.status_code == 502
    body = response.json()["error"]
    assert body["code"] == "upstream_connect"
    assert f"proxy {tp.url} refused CONNECT to 127.0.0.1:" in body["message"]
    assert "HTTP 403" in body["message"]
    assert "Traceback" not in proc.stderr


def test_an_unreachable_proxy_is_named(tmp_path: Path, upstream: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proc = sidecar(tmp_path, upstream, f'proxy = "{dead}"\nretries = 0')
    try:
        response = post(proc)
    finally:
        proc.stop()
    assert response.status_code == 502
    assert f"proxy {dead} unreachable" in response.json()["error"]["message"]


def test_an_untrusted_certificate_names_subject_and_issuer(
    tmp_path: Path, upstream: str, proxy: Tinyproxy
) -> None:
    for route in ("retries = 0", f'retries = 0\nproxy = "{proxy.url}"'):
        proc = sidecar(tmp_path, upstream, route)  # the system store: the local CA is unknown
        try:
            response = post(proc)
        finally:
            proc.stop()
        assert response.status_code == 502
        message = response.json()["error"]["message"]
        assert "certificate of 127.0.0.1 is not trusted" in message
        assert "subject " in message and "issuer " in message and "trustme" in message
        assert "Traceback" not in proc.stderr


def test_mutual_tls(tmp_path: Path, ca: trustme.CA, pki: dict[str, Path]) -> None:
    with tls_upstream(ca, "127.0.0.1", client_ca=ca) as server:
        trust = f'tls_ca_file = "{toml_path(pki["ca"])}"\nretries = 0'
        proc = sidecar(tmp_path, server.url, trust)
        try:
            response = post(proc)
        finally:
            proc.stop()
        assert response.status_code == 502
        message = response.json()["error"]["message"]
        # TLS 1.3 checks the client certificate after the handshake; the alert reaches Python's
        # TLS as a plain close, so the message says what that most likely means.
        assert "if it requires a client certificate, set tls_client_cert" in message
        client = (
            f'\ntls_client_cert = "{toml_path(pki["client_cert"])}"'
            f'\ntls_client_key = "{toml_path(pki["client_key"])}"'
        )
        proc = sidecar(tmp_path, server.url, trust + client)
        try:
            assert sdk_text(proc) == recorded_text()
        finally:
            proc.stop()


def test_tls_server_name(tmp_path: Path, ca: trustme.CA, pki: dict[str, Path]) -> None:
    with tls_upstream(ca, "llm-gateway.internal") as server:
        trust = f'tls_ca_file = "{toml_path(pki["ca"])}"\nretries = 0'
        proc = sidecar(tmp_path, server.url, trust)
        try:
            response = post(proc)
        finally:
            proc.stop()
        assert response.status_code == 502
        assert "not trusted" in response.json()["error"]["message"]
        proc = sidecar(tmp_path, server.url, trust + '\ntls_server_name = "llm-gateway.internal"')
        try:
            assert sdk_text(proc) == recorded_text()
        finally:
            proc.stop()


def test_tls_verify_false_works_and_warns_at_start(tmp_path: Path, upstream: str) -> None:
    proc = sidecar(tmp_path, upstream, "tls_verify = false")
    try:
        assert sdk_text(proc) == recorded_text()
    finally:
        proc.stop()
    assert "tls_verify = false" in proc.stderr and "NOT verified" in proc.stderr


def test_a_client_that_leaves_closes_the_tunnelled_upstream(
    tmp_path: Path, upstream: str, proxy: Tinyproxy, pki: dict[str, Path]
) -> None:
    route = f'proxy = "{proxy.url}"\ntls_ca_file = "{toml_path(pki["ca"])}"'
    proc = sidecar(tmp_path, upstream, route)
    rid = uuid.uuid4().hex
    try:
        with (
            httpx.Client(timeout=BOUND_S) as client,
            client.stream(
                "POST",
                proc.url + "/fault/hang-body/v1/chat/completions",
                json={"model": "m", "stream": True},
                headers={"x-request-id": rid},
            ) as response,
        ):
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                if b"before the hang" in chunk:
                    break
        wait_closed(rid)  # through tinyproxy, the provider saw its connection close
    finally:
        proc.stop()
