"""A listener that cannot bind: ``streamhop serve`` and ``streamhop simulate`` say which listener,
which address, why, and which key or flag changes it, in one line on stderr, and exit 2 (real
processes against a port a listening socket of the test holds)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DEAD_UPSTREAM = "http://127.0.0.1:9"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port a listening socket holds for the test."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield int(sock.getsockname()[1])


def _streamhop(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``streamhop ARGV...`` to its end (it must not start serving)."""
    return subprocess.run(
        [sys.executable, "-m", "streamhop.sidecar.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr == expected + "\n"
    assert result.stdout == ""


def test_serve_admin_port_in_use(busy_port: int) -> None:
    result = _streamhop(
        "serve",
        "--upstream",
        DEAD_UPSTREAM,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        f"127.0.0.1:{busy_port}",
    )
    _assert_one_line(
        result,
        f"streamhop serve: cannot listen on 127.0.0.1:{busy_port} for the admin listener "
        "([server] admin_listen / --admin-listen): address already in use",
    )


def test_serve_proxy_port_in_use(busy_port: int) -> None:
    result = _streamhop(
        "serve",
        "--upstream",
        DEAD_UPSTREAM,
        "--listen",
        f"127.0.0.1:{busy_port}",
        "--admin-listen",
        "127.0.0.1:0",
    )
    _assert_one_line(
        result,
        f"streamhop serve: cannot listen on 127.0.0.1:{busy_port} for the proxy listener "
        "([server] listen / --listen): address already in use",
    )


def test_serve_port_from_the_config_file_in_use(busy_port: int, tmp_path: Path) -> None:
    """The default log level is info: nothing is logged before the listeners are bound."""
    config = tmp_path / "streamhop.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:{busy_port}"

[[routes]]
prefix = "/"
upstream = "{DEAD_UPSTREAM}"
"""
    )
    result = _streamhop("serve", "--config", str(config))
    _assert_one_line(
        result,
        f"streamhop serve: cannot listen on 127.0.0.1:{busy_port} for the admin listener "
        "([server] admin_listen / --admin-listen): address already in use",
    )


def test_serve_both_listeners_on_one_port() -> None:
    """The proxy listener binds first; the admin listener on the same port is refused before
    anything serves (the proxy's socket is released with the process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    result = _streamhop(
        "serve",
        "--upstream",
        DEAD_UPSTREAM,
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{port}",
    )
    _assert_one_line(
        result,
        f"streamhop serve: cannot listen on 127.0.0.1:{port} for the admin listener "
        "([server] admin_listen / --admin-listen): address already in use",
    )


def test_serve_unresolvable_host() -> None:
    result = _streamhop(
        "serve", "--upstream", DEAD_UPSTREAM, "--listen", "no-such-host.invalid:8787"
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        "streamhop serve: cannot listen on no-such-host.invalid:8787 for the proxy listener "
        "([server] listen / --listen): "
    )


def test_simulate_port_in_use(busy_port: int) -> None:
    result = _streamhop("simulate", "--listen", f"127.0.0.1:{busy_port}")
    _assert_one_line(
        result,
        f"streamhop simulate: cannot listen on 127.0.0.1:{busy_port} for the simulator "
        "listener (--listen): address already in use",
    )


def test_simulate_as_its_own_program_port_in_use(busy_port: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamhop.sidecar.simulate", "--listen", f"127.0.0.1:{busy_port}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _assert_one_line(
        result,
        f"streamhop simulate: cannot listen on 127.0.0.1:{busy_port} for the simulator "
        "listener (--listen): address already in use",
    )


def test_serve_record_dir_it_cannot_create(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = tmp_path / "streamhop.toml"
    config.write_text(f'[record]\ndir = "{blocker}/recordings"\nsample = 1.0\n')
    result = _streamhop(
        "serve",
        "--config",
        str(config),
        "--upstream",
        DEAD_UPSTREAM,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--log-level",
        "warning",
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("streamhop serve: invalid config record.dir: cannot use ")
    assert result.stderr.count("\n") == 1
