"""The middleware in every ASGI framework and server it promises: a matrix of real server
processes on loopback ports.

Frameworks (apps in :mod:`tests.middleware.asgi.frameworks`): FastAPI, Starlette, sse-starlette,
Django, Quart, Litestar. Servers: uvicorn, hypercorn, granian. Each cell is one server process
serving one framework's chat endpoint with the middleware and, for requests with
``x-test-plain: 1``, without it. In each cell:

* the stream is re-chunked: the same text, ``[DONE]`` last, and far fewer events than the same
  endpoint sends without the middleware;
* after the client closes its connection mid-stream, the handler's generator runs its
  ``finally`` within :data:`STOP_BOUND_S` (its state file says when; one ``time.monotonic()``
  clock for every process on Linux). The apps give the middleware's last resort a grace far
  beyond that bound, so the handler stopped because its framework heard the disconnect.

A framework or server that is not installed skips its cells.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from streamhop.middleware import SSEDecoder, SSEEvent

from .frameworks.common import PLAIN_HEADER, STATE_DIR_ENV, expected_text

pytestmark = pytest.mark.integration

REPO: Final = Path(__file__).resolve().parents[3]
FRAMEWORKS: Final = {
    # name: (app module, the package it needs)
    "fastapi": ("fastapi_app", "fastapi"),
    "starlette": ("starlette_app", "starlette"),
    "sse-starlette": ("sse_starlette_app", "sse_starlette"),
    "django": ("django_app", "django"),
    "quart": ("quart_app", "quart"),
    "litestar": ("litestar_app", "litestar"),
}
SERVERS: Final = ("uvicorn", "hypercorn", "granian")
STREAM_EVENTS: Final = 200
"""Deltas of the re-chunking check, 2 ms apart (the apps merge on a 50 ms window)."""
STOP_BOUND_S: Final = 2.0
"""Client close to the handler's ``finally``; measured in milliseconds, bounded generously for
a loaded 2-core machine."""
START_BOUND_S: Final = 60.0


@dataclass
class Cell:
    """A running server process: one framework on one server."""

    framework: str
    server: str
    url: str
    state_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _command(server: str, target: str, sock: socket.socket | None, port: int) -> list[str]:
    if server == "uvicorn":
        assert sock is not None
        return [sys.executable, "-m", "uvicorn", "--fd", str(sock.fileno()),
                "--log-level", "warning", target]  # fmt: skip
    if server == "hypercorn":
        assert sock is not None
        return [sys.executable, "-m", "hypercorn", "--bind", f"fd://{sock.fileno()}",
                "--log-level", "warning", target]  # fmt: skip
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1", "--log-level", "warning", target]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server we started, then SIGKILL its process group (its workers) if it is
    still there after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we created for it (granian workers)
            proc.wait()


def _ready(url: str, proc: subprocess.Popen[bytes]) -> bool:
    """Poll ``GET /_ready`` until it answers, the process exits, or the bound passes."""
    deadline = time.monotonic() + START_BOUND_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/_ready", timeout=2) as resp:
                if resp.status == 204:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)  # the next poll; readiness itself is what the loop waits on
    return False


def _start(framework: str, server: str, state_dir: Path, log: Path) -> Cell:
    module, _ = FRAMEWORKS[framework]
    target = f"tests.middleware.asgi.frameworks.{module}:app"
    env = dict(os.environ)
    env[STATE_DIR_ENV] = str(state_dir)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (env.get("PYTHONPATH", ""), str(REPO)) if p
    )  # the server imports the app from the repository (and its workers too)
    for _attempt in range(3):  # granian binds a port we chose; another process may take it
        sock: socket.socket | None = None
        if server in ("uvicorn", "hypercorn"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            port = sock.getsockname()[1]
        else:
            port = _free_port()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                _command(server, target, sock, port),
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=() if sock is None else (sock.fileno(),),
                start_new_session=True,
            )
        if sock is not None:
            sock.close()  # the server has its own copy
        url = f"http://127.0.0.1:{port}"
        if _ready(url, proc):
            return Cell(framework, server, url, state_dir, proc, log)
        _stop(proc)
        if sock is not None:
            break  # a socket of our own: no port race to retry
    raise RuntimeError(
        f"{server} serving {framework} did not start:\n{log.read_text(errors='replace')[-3000:]}"
    )


@pytest.fixture(
    scope="module",
    params=[(f, s) for f in FRAMEWORKS for s in SERVERS],
    ids=[f"{f}-{s}" for f in FRAMEWORKS for s in SERVERS],
)
def cell(request: pytest.FixtureRequest) -> Iterator[Cell]:
    framework, server = request.param
    for package in (FRAMEWORKS[framework][1], server):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed")
    with tempfile.TemporaryDirectory(prefix=f"streamhop-{framework}-{server}-") as tmp:
        state_dir = Path(tmp) / "state"
        state_dir.mkdir()
        started = _start(framework, server, state_dir, Path(tmp) / "server.log")
        try:
            yield started
        finally:
            _stop(started.proc)


@dataclass
class Received:
    headers: dict[str, str]
    events: list[SSEEvent]


async def _read_stream(cell: Cell, rid: str, n: int, *, plain: bool) -> Received:
    headers = {PLAIN_HEADER.decode(): "1"} if plain else {}
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{cell.url}/chat", params={"id": rid, "n": str(n), "pause_ms": "2"}, headers=headers
        ) as resp,
    ):
        assert resp.status == 200, (resp.status, await resp.text(), cell.log_tail())
        async with asyncio.timeout(30):
            async for chunk in resp.content.iter_any():
                events += decoder.feed(chunk)
        events += decoder.feed(b"")
        return Received(dict(resp.headers), events)


def _text(events: list[SSEEvent]) -> str:
    parts = []
    for event in events:
        if event.data is None or event.data == "[DONE]":
            continue
        for choice in json.loads(event.data)["choices"]:
            parts.append(choice["delta"].get("content") or "")
    return "".join(parts)


async def _state(cell: Cell, rid: str, bound_s: float) -> dict[str, Any] | None:
    """The handler's state file once it exists (its ``finally`` ran), or ``None`` after
    ``bound_s`` seconds."""
    path = cell.state_dir / f"{rid}.json"
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if path.exists():
            state: dict[str, Any] = json.loads(path.read_text())
            return state
        await asyncio.sleep(0.002)  # the next poll of the file
    return None


async def test_rechunked_with_identical_text(cell: Cell) -> None:
    rid = uuid.uuid4().hex[:8]
    plain = await _read_stream(cell, f"plain-{rid}", STREAM_EVENTS, plain=True)
    wrapped = await _read_stream(cell, f"wrapped-{rid}", STREAM_EVENTS, plain=False)
    text = expected_text(STREAM_EVENTS)
    assert _text(plain.events) == text
    assert _text(wrapped.events) == text
    assert wrapped.events[-1].data == plain.events[-1].data == "[DONE]"
    assert len(plain.events) == STREAM_EVENTS + 3  # one event per chunk: role, deltas, end
    print(f"events {cell.framework} on {cell.server}: {len(wrapped.events)} of {len(plain.events)}")
    assert len(wrapped.events) <= len(plain.events) // 2, (
        len(wrapped.events),
        len(plain.events),
    )
    assert {k.lower(): v for k, v in wrapped.headers.items()}["x-accel-buffering"] == "no"


async def test_client_disconnect_stops_the_handler(cell: Cell) -> None:
    rid = f"leave-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        resp = await session.get(
            f"{cell.url}/chat", params={"id": rid, "n": "100000", "pause_ms": "20"}
        )
        assert resp.status == 200, cell.log_tail()
        decoder = SSEDecoder()
        events: list[SSEEvent] = []
        async with asyncio.timeout(10):
            while not _text(events):  # 50 deltas/s: the answer would last 2000 s
                events += decoder.feed(await resp.content.readany())
        closed_at = time.monotonic()
        resp.close()  # the client goes away: its connection closes
    state = await _state(cell, rid, bound_s=STOP_BOUND_S + 5.0)
    assert state is not None, (
        f"the handler's finally did not run within {STOP_BOUND_S + 5.0:g} s of the client "
        f"leaving\n{cell.log_tail()}"
    )
    latency_s = state["finally_at"] - closed_at
    print(f"stop latency {cell.framework} on {cell.server}: {latency_s * 1000:.1f} ms")
    assert latency_s < STOP_BOUND_S, (latency_s, state)
    assert state["ended"] in ("CancelledError", "GeneratorExit"), state
