"""The admin listener (``/metrics``, ``/healthz``, ``/readyz``) is admitted like the proxy port,
and "loopback" is decided on the address, not on how it is written.

Real ``streamhop serve`` processes on loopback ports chosen by the OS, one small aiohttp upstream,
and raw sockets for what a client library would refuse to send: an endless header, a head that
never ends, a ``Host`` a DNS-rebinding page would send (docs/security.md).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.support import (
    BackgroundAiohttp,
    StreamhopProcess,
    raw_connect,
    read_to_eof,
    serve,
    sidecar_config,
    url_address,
)

HEAD_LIMITS = """
max_header_bytes = 16384
max_headers = 40
header_timeout_s = 1
"""
READ_BOUND_S = 5.0
"""Seconds a socket read may block; every answer expected here comes within ~1 s."""
ADMIN_PATHS = ("/metrics", "/healthz", "/readyz")
REBINDING_HOST = "rebind.evil.example"


def _can_bind_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _can_bind_ipv6_loopback(), reason="no IPv6 loopback")


@pytest.fixture(scope="module")
def upstream() -> Iterator[BackgroundAiohttp]:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    with BackgroundAiohttp(app) as server:
        yield server


@pytest.fixture(scope="module")
def side(
    upstream: BackgroundAiohttp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StreamhopProcess]:
    """A sidecar with both listeners on 127.0.0.1 and short head limits."""
    proc = serve(tmp_path_factory.mktemp("admin"), sidecar_config(upstream.url, server=HEAD_LIMITS))
    yield proc
    proc.stop()


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def _get(url: str | None, path: str, host: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *headers, "Connection: close"]
    with raw_connect(url, READ_BOUND_S) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return read_to_eof(sock)


# --- 1. head limits on the admin port ---------------------------------------------------------


def test_admin_answers_a_32_mib_header_with_431_before_reading_it(side: StreamhopProcess) -> None:
    total = 32 * 1024 * 1024
    chunk = b"a" * 65536
    sent = 0
    with raw_connect(side.admin_url, READ_BOUND_S) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        # Keep sending the one header value until the server answers (or resets): an admin
        # listener without a head limit buffers all 32 MiB and never answers.
        while sent < total:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
        assert sent < total, "the admin listener read a 32 MiB header without answering"
        answer = read_to_eof(sock)  # the answer, then the server's close
    assert _status(answer) == 431
    assert b"connection: close" in answer.lower()


def test_admin_answers_too_many_headers_with_431(side: StreamhopProcess) -> None:
    answer = _get(side.admin_url, "/metrics", "127.0.0.1", *(f"X-H{i}: v" for i in range(60)))
    assert _status(answer) == 431


def test_admin_cuts_a_partial_head_at_header_timeout(side: StreamhopProcess) -> None:
    with (
        raw_connect(side.admin_url, READ_BOUND_S) as partial,
        raw_connect(side.admin_url, READ_BOUND_S) as silent,
    ):
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
        started = time.monotonic()
        answer = read_to_eof(partial)  # blocks until the server answers and closes
        # A connection that sent nothing is closed without an answer.
        assert read_to_eof(silent) == b""
        elapsed = time.monotonic() - started
    assert _status(answer) == 408
    assert elapsed < READ_BOUND_S - 1  # header_timeout_s = 1


# --- 2. Host check on the admin port ----------------------------------------------------------


def test_admin_refuses_a_rebinding_host_with_421(side: StreamhopProcess) -> None:
    _, port = url_address(side.admin_url)
    for path in ADMIN_PATHS:
        answer = _get(side.admin_url, path, f"{REBINDING_HOST}:{port}")
        assert _status(answer) == 421, path
        assert b"misdirected_request" in answer
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            assert _status(_get(side.admin_url, path, host)) == 200, (path, host)


def test_admin_with_allowed_hosts_still_answers_probes_by_ip(
    upstream: BackgroundAiohttp, tmp_path: Path
) -> None:
    """A gateway sets ``allowed_hosts`` to its public names; kubelet probes
    (``Host: <podIP>:<port>``) and Prometheus scrapes (the pod IP) must still pass."""
    config = sidecar_config(upstream.url, server='allowed_hosts = ["chat.example.com"]')
    proc = serve(tmp_path, config)
    try:
        _, port = url_address(proc.admin_url)
        for host in (f"10.1.2.3:{port}", f"[fd00::5]:{port}", "chat.example.com"):
            assert _status(_get(proc.admin_url, "/readyz", host)) == 200, host
        assert _status(_get(proc.admin_url, "/metrics", f"{REBINDING_HOST}:{port}")) == 421
        # A name is allowed only when listed (docs: add "localhost" for kubectl port-forward).
        assert _status(_get(proc.admin_url, "/metrics", f"localhost:{port}")) == 421
        # The proxy port keeps exactly the listed names.
        assert _status(_get(proc.url, "/v1/models", "10.1.2.3")) == 421
    finally:
        proc.stop()


def test_admin_on_a_non_loopback_address_answers_any_host(
    upstream: BackgroundAiohttp, tmp_path: Path
) -> None:
    """The chart binds the admin listener on 0.0.0.0: by default every Host passes there."""
    config = sidecar_config(upstream.url).replace(
        'admin_listen = "127.0.0.1:0"', 'admin_listen = "0.0.0.0:0"'
    )
    proc = serve(tmp_path, config)
    try:
        _, port = url_address(proc.admin_url)
        url = f"http://127.0.0.1:{port}"
        for host in (f"10.1.2.3:{port}", f"streamhop.ns.svc:{port}"):
            assert _status(_get(url, "/healthz", host)) == 200, host
    finally:
        proc.stop()


# --- 3. loopback however it is written --------------------------------------------------------


@needs_ipv6
@pytest.mark.parametrize(
    ("listen", "admin_listen"),
    [("[0:0:0:0:0:0:0:1]:0", "127.0.0.2:0"), ("127.0.0.2:0", "[0:0:0:0:0:0:0:1]:0")],
)
def test_loopback_written_another_way_keeps_the_host_check(
    upstream: BackgroundAiohttp, tmp_path: Path, listen: str, admin_listen: str
) -> None:
    config = sidecar_config(upstream.url).replace(
        'listen = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"',
        f'listen = "{listen}"\nadmin_listen = "{admin_listen}"',
    )
    assert listen in config and admin_listen in config
    proc = serve(tmp_path, config)
    try:
        for url, path, written in (
            (proc.url, "/v1/models", listen),
            (proc.admin_url, "/metrics", admin_listen),
        ):
            host, port = url_address(url)
            bound = f"[{host}]" if ":" in host else host
            assert _status(_get(url, path, f"{REBINDING_HOST}:{port}")) == 421, url
            as_written = written.rsplit(":", 1)[0]
            for allowed in (f"{as_written}:{port}", f"{bound}:{port}", f"localhost:{port}"):
                assert _status(_get(url, path, allowed)) == 200, (url, allowed)
    finally:
        proc.stop()
