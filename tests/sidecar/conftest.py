"""Session-wide real processes: ``streamhop simulate``, a scripted aiohttp upstream, and
``streamhop serve`` in front of both, all on loopback ports chosen by the OS; and
:func:`start_sidecar` for tests that need a sidecar of their own. Applies to every subfolder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sidecar.upstreams import make_app
from tests.support import (
    BackgroundAiohttp,
    StartSidecar,
    StreamhopProcess,
    serve,
    sidecar_config,
    start_streamhop,
)


@pytest.fixture(scope="session")
def simulator() -> Iterator[StreamhopProcess]:
    proc = start_streamhop(
        "simulate",
        "--listen",
        "127.0.0.1:0",
        "--ttft-ms",
        "30",
        "--tokens-per-second",
        "2000",
        "--events-per-second",
        "200",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def scripted_upstream() -> Iterator[BackgroundAiohttp]:
    with BackgroundAiohttp(make_app()) as server:
        yield server


@pytest.fixture(scope="session")
def sidecar(
    simulator: StreamhopProcess,
    scripted_upstream: BackgroundAiohttp,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StreamhopProcess]:
    config = f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_timeout_s = 2

[[routes]]
prefix = "/sim"
upstream = "{simulator.url}"

[[routes]]
prefix = "/"
upstream = "{scripted_upstream.url}"

[[routes]]
prefix = "/with-key"
upstream = "{scripted_upstream.url}/echo"
[routes.headers]
Authorization = "Bearer ${{STREAMHOP_TEST_KEY}}"

[[routes]]
prefix = "/slow"
upstream = "{scripted_upstream.url}"
connect_timeout_s = 1

[[routes]]
prefix = "/down"
upstream = "http://127.0.0.1:9"
connect_timeout_s = 2
"""
    proc = serve(
        tmp_path_factory.mktemp("sidecar"), config, env={"STREAMHOP_TEST_KEY": "sk-test-123"}
    )
    yield proc
    proc.stop()


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[StartSidecar]:
    """Start sidecars of the test's own (one route ``/``); each is stopped at the end, whatever
    happens."""
    procs: list[StreamhopProcess] = []

    def start(
        upstream: str, *, server: str = "", sections: str = "", route: str = ""
    ) -> StreamhopProcess:
        config = sidecar_config(upstream, server=server, sections=sections, route=route)
        proc = serve(tmp_path, config)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
