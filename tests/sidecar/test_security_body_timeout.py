"""A request body that stalls gets 408 after ``[server] body_timeout_s`` and frees its slot.

Left open by the last round: a client that sent its body very slowly held one of
``max_streams`` slots until it finished or disconnected (there was a head timeout, not a body
timeout). A real sidecar on loopback and a raw socket that sends half a body, then nothing.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config import config_from_dict
from tests.support import StreamhopProcess, serve

BODY_TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamhopProcess]:
    config = f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
body_timeout_s = {BODY_TIMEOUT_S}

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:9"
connect_timeout_s = 1
retries = 0
"""
    proc = serve(Path(tmp_path_factory.mktemp("body-timeout")), config)
    yield proc
    proc.stop()


def test_a_body_that_stalls_gets_408_and_the_connection_closes(side: StreamhopProcess) -> None:
    host, port = side.url.removeprefix("http://").split(":")
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head + b'{"model": "m", ')  # 15 of 100 bytes, then nothing
        chunks = []
        while chunk := sock.recv(65536):  # ends when the sidecar closes the connection
            chunks.append(chunk)
    answer = b"".join(chunks)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request_timeout" in answer and b"body_timeout_s" in answer
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("value", [0, -1, "x"])
def test_body_timeout_is_validated(value: object) -> None:
    with pytest.raises(ConfigError, match=r"server\.body_timeout_s"):
        config_from_dict(
            {
                "server": {"body_timeout_s": value},
                "routes": [{"prefix": "/", "upstream": "http://h"}],
            }
        )


def test_body_timeout_has_a_default() -> None:
    config = config_from_dict({"routes": [{"prefix": "/", "upstream": "http://h"}]})
    assert config.server.body_timeout_s == 60.0
