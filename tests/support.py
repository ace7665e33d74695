"""Helpers shared by the tests that run real servers on loopback ports.

* **Waiting**: :func:`wait_for` and :func:`wait_for_async` poll observable state until a
  deadline, so no test sleeps for a guessed time and hopes.
* **Processes**: :func:`start_streamhop` runs a ``streamhop`` subcommand and waits for the
  ``listening on http://...`` line it prints (ports chosen by the OS: port 0); :func:`serve`
  writes a config file and starts ``streamhop serve`` on it; :func:`sidecar_config` is the TOML of
  a one-route sidecar.
* **Servers in a thread**: :class:`BackgroundAiohttp` (an upstream whose behaviour a test
  scripts) and :class:`BackgroundUvicorn` (an ASGI app under test).
* **The client's view**: request bodies (:func:`chat_body`), SSE parsing independent of
  streamhop's decoder (:func:`sse_events`, :func:`sse_pairs`, :func:`sse_data`,
  :func:`chat_text`), the simulator's stream log (:func:`sim_record`) and the sidecar's
  ``/metrics`` (:func:`scrape`, :func:`metric`, :func:`wait_idle`).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

import httpx2
import orjson
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

if TYPE_CHECKING:
    from starlette.types import ASGIApp

FIXTURES = Path(__file__).resolve().parent / "fixtures"
_URL = rb"https?://(?:[0-9.]+|\[[0-9a-f:]+\]):\d+"
_READY = re.compile(rb"listening on (%s)(?: \(admin (%s)\))?" % (_URL, _URL))

T = TypeVar("T")

# --- waiting on state ----------------------------------------------------------------------------

POLL_S = 0.01
"""Pause between two looks at the state a test waits for."""


def wait_for(predicate: Callable[[], T], bound_s: float, what: str) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Args:
        predicate: looks at observable state (a response, a log line, a counter); no side
            effects the test relies on.
        bound_s: seconds after which waiting fails.
        what: the state waited for, for the failure message.

    Raises:
        AssertionError: ``predicate`` stayed falsy for ``bound_s`` seconds.
    """
    deadline = time.monotonic() + bound_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {bound_s:g} s for {what}")
        time.sleep(POLL_S)


async def wait_for_async(predicate: Callable[[], Awaitable[T]], bound_s: float, what: str) -> T:
    """:func:`wait_for` for a coroutine predicate (state served by the test's own loop)."""
    deadline = time.monotonic() + bound_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {bound_s:g} s for {what}")
        await asyncio.sleep(POLL_S)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refuses_connections(url: str) -> bool:
    """True when nothing accepts TCP connections at ``url``'s host and port."""
    host, _, port = url.removeprefix("http://").partition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


# --- streamhop processes -------------------------------------------------------------------------


class StreamhopProcess:
    """A running ``streamhop`` subcommand; ``url`` (and ``admin_url`` for serve) once ready."""

    def __init__(
        self, argv: Sequence[str], timeout_s: float = 30.0, env: Mapping[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamhop.sidecar.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=None if env is None else {**os.environ, **env},
        )
        self.stderr_lines: list[bytes] = []
        self.stdout_lines: list[bytes] = []
        found: list[re.Match[bytes]] = []
        ready = threading.Event()

        def read_stdout() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.stdout_lines.append(line)
                if not found:
                    match = _READY.search(line)
                    if match:
                        found.append(match)
                        ready.set()
            ready.set()

        def read_stderr() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr_lines.append(line)

        self._readers = [
            threading.Thread(target=read_stdout, daemon=True),
            threading.Thread(target=read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        ready.wait(timeout_s)
        if not found:
            self.stop()
            raise RuntimeError(
                f"streamhop {' '.join(argv)} did not start within {timeout_s:g} s:\n"
                + b"".join(self.stderr_lines).decode(errors="replace")[-3000:]
            )
        self.url = found[0].group(1).decode()
        admin = found[0].group(2)
        self.admin_url = admin.decode() if admin else None

    @property
    def stderr(self) -> str:
        return b"".join(self.stderr_lines).decode(errors="replace")

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code. Once stopped, ``stderr``
        holds everything the process wrote."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode


def start_streamhop(*argv: str, env: Mapping[str, str] | None = None) -> StreamhopProcess:
    """Start ``streamhop ARGV...`` (``env`` added to this process's environment) and wait until
    it listens."""
    return StreamhopProcess(argv, env=env)


def serve(
    directory: Path,
    config: str,
    *,
    log_level: str = "warning",
    env: Mapping[str, str] | None = None,
) -> StreamhopProcess:
    """Write ``config`` (TOML) to a new file in ``directory``; start ``streamhop serve`` on it."""
    path = directory / f"streamhop-{uuid.uuid4().hex[:8]}.toml"
    path.write_text(config)
    return start_streamhop("serve", "--config", str(path), "--log-level", log_level, env=env)


StartSidecar = Callable[..., StreamhopProcess]
"""The ``start_sidecar`` fixture of ``tests/sidecar/conftest.py``:
``start_sidecar(upstream, *, server="", sections="", route="")`` (see :func:`sidecar_config`)."""


def sidecar_config(upstream: str, *, server: str = "", sections: str = "", route: str = "") -> str:
    """TOML of a sidecar on loopback port-0 listeners with one route ``/`` to ``upstream``.

    Args:
        upstream: the route's upstream URL.
        server: more ``[server]`` keys.
        sections: more tables (``[resume]``, ``[backpressure]``...), before the route.
        route: more keys of the route.
    """
    return f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{server}

{sections}

[[routes]]
prefix = "/"
upstream = "{upstream}"
{route}
"""


# --- servers in a background thread --------------------------------------------------------------


class BackgroundAiohttp:
    """Serve an aiohttp app on 127.0.0.1 (free port) from a background thread.

    Use as a context manager; ``url`` is ``http://127.0.0.1:PORT``.
    """

    def __init__(self, app: web.Application, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.ssl_context = ssl_context
        """With a server TLS context, it serves HTTPS and ``url`` is ``https://...``."""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def __enter__(self) -> BackgroundAiohttp:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(15)
        return self

    async def _start(self) -> str:
        self._runner = web.AppRunner(self.app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://127.0.0.1:{port}"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(15)
        self.loop.close()


class BackgroundUvicorn:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) from a daemon thread.

    Use as a context manager; ``url`` is ``http://127.0.0.1:PORT``. On exit the server shuts
    down (open connections get up to 2 s) and the thread is joined.

    Args:
        app: the ASGI app.
        lifespan: uvicorn's ``lifespan`` setting (``"on"`` runs the app's startup/shutdown).
    """

    def __init__(self, app: ASGIApp, lifespan: Literal["auto", "on", "off"] = "off") -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> BackgroundUvicorn:
        self.thread.start()
        try:
            wait_for(
                lambda: self.server.started or not self.thread.is_alive(), 15, "uvicorn to start"
            )
            if not self.server.started:
                raise AssertionError("uvicorn stopped before it started")
        except AssertionError:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


# --- what a client sends and sees ----------------------------------------------------------------

CHAT = "/v1/chat/completions"
SLOW_SIM = {"x-sim-events-per-second": "20", "x-sim-tokens-per-second": "100"}
"""Simulator headers for a stream that takes seconds (5 tokens an event, 20 events a second):
a client can leave in the middle of it."""


def chat_body(
    prompt: str = "hi",
    max_tokens: int | None = None,
    *,
    model: str = "sim",
    stream: bool | None = True,
) -> dict[str, Any]:
    """A Chat Completions request with one user message; ``stream=None`` leaves the key out
    (the WebSocket bridge sets it)."""
    body: dict[str, Any] = {"model": model}
    if stream is not None:
        body["stream"] = stream
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body["messages"] = [{"role": "user", "content": prompt}]
    return body


def sse_events(raw: bytes) -> tuple[list[dict[str, str]], bytes]:
    """The complete SSE events in ``raw`` and the incomplete rest.

    Independent of streamhop's decoder on purpose: this is what a client sees. Each event is its
    fields by name (repeated fields joined by ``"\\n"``, comment lines under ``""``); blocks are
    LF-delimited, as streamhop and the simulator write them, and must be UTF-8.
    """
    blocks = raw.split(b"\n\n")
    events = []
    for block in blocks[:-1]:
        if not block:
            continue
        fields: dict[str, str] = {}
        for line in block.decode("utf-8").split("\n"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = fields[name] + "\n" + value if name in fields else value
        events.append(fields)
    return events, blocks[-1]


def sse_pairs(raw: bytes) -> list[tuple[str | None, str]]:
    """``(event name or None, data)`` of each complete event in ``raw`` that carries data."""
    return [(e.get("event"), e["data"]) for e in sse_events(raw)[0] if "data" in e]


def sse_data(raw: bytes) -> list[Any]:
    """The data of each complete event in ``raw``, JSON-decoded where it parses, else as is."""
    out: list[Any] = []
    for _, data in sse_pairs(raw):
        try:
            out.append(orjson.loads(data))
        except orjson.JSONDecodeError:
            out.append(data)
    return out


def chat_text(datas: Iterable[Any]) -> str:
    """The text a client accumulates from Chat Completions chunks (``delta.content``); data
    that is not an object (``[DONE]``) adds nothing."""
    parts = []
    for data in datas:
        if isinstance(data, dict):
            for choice in data.get("choices", []):
                parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


def sim_record(simulator_url: str, rid: str, bound_s: float = 15.0) -> dict[str, Any]:
    """The simulator's stream-log entry for request ``rid`` (``x-request-id``) once it has an
    outcome."""

    def finished() -> dict[str, Any] | None:
        for record in httpx2.get(simulator_url + "/_simulator/streams", timeout=10).json():
            if record["id"] == rid and record["outcome"] is not None:
                return dict(record)
        return None

    return wait_for(finished, bound_s, f"the simulator to finish request {rid}")


def sim_started(simulator_url: str, rid: str) -> bool:
    """True once the simulator's stream log has request ``rid`` (running or finished)."""
    records = httpx2.get(simulator_url + "/_simulator/streams", timeout=10).json()
    return any(record["id"] == rid for record in records)


# --- the sidecar's /metrics ----------------------------------------------------------------------

SETTLE_S = 10.0
"""Upper bound for the sidecar to finish recording a request the client has left or read."""


@dataclass(frozen=True)
class Scrape:
    """One parsed ``/metrics`` answer.

    Attributes:
        families: family name as exposed (counters keep ``_total``) -> (type, samples).
    """

    families: Mapping[str, tuple[str, list[Sample]]]

    def samples(self) -> Iterator[Sample]:
        """Every sample of every family."""
        for _, samples in self.families.values():
            yield from samples

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(
            s.value
            for s in self.samples()
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


def scrape(admin_url: str) -> Scrape:
    """GET ``/metrics`` and parse it with the Prometheus client's text parser.

    Counter families come out of the parser without their ``_total`` suffix; they are keyed here
    by the exposed name (``streamhop_events_total``) so that lookups match DESIGN.md.
    """
    text = httpx2.get(admin_url + "/metrics", timeout=10).text
    families: dict[str, tuple[str, list[Sample]]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        families[name] = (family.type, list(family.samples))
    return Scrape(families)


def metric(admin_url: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` with ``labels`` in one scrape (0 if none)."""
    return scrape(admin_url).value(name, **labels)


def wait_idle(admin_url: str, route: str = "/sim", bound_s: float = SETTLE_S) -> Scrape:
    """Scrape until no request is in flight on ``route``; return that scrape.

    ``streams_active`` is decremented in the same synchronous step that records the request's
    other metrics, so a scrape showing 0 shows every finished request completely.
    """

    def idle() -> Scrape | None:
        current = scrape(admin_url)
        return current if current.value("streamhop_streams_active", route=route) == 0 else None

    return wait_for(idle, bound_s, f"no request in flight on route {route}")


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How much the samples ``name`` matching ``labels`` grew between two scrapes."""
    return after.value(name, **labels) - before.value(name, **labels)


# --- traffic through a sidecar -------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """What a client got from one streamed response."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def events(self) -> int:
        """SSE events in the body, as the client counts them."""
        return len(sse_events(self.body)[0])


def stream_once(
    http: httpx2.Client, base: str, headers: Mapping[str, str], body: Mapping[str, Any]
) -> Received:
    """POST a streaming chat request to ``base`` and read the raw body to the end."""
    with http.stream("POST", base + CHAT, json=dict(body), headers=dict(headers)) as response:
        data = b"".join(response.iter_raw())
    return Received(response.status_code, data, dict(response.headers))


_FIRST_TEXT = re.compile(rb'"content":"[^"]')


def disconnect_once(http: httpx2.Client, base: str) -> None:
    """Start a long stream, read up to the first non-empty content delta, then close the
    connection (the first chunk, the role, has ``"content":""``)."""
    with http.stream(
        "POST", base + CHAT, json=chat_body(max_tokens=400), headers=SLOW_SIM
    ) as response:
        assert response.status_code == 200
        seen = b""
        for chunk in response.iter_raw():
            seen += chunk
            if _FIRST_TEXT.search(seen):
                break
    # Leaving the block unread closes the connection: httpx cannot reuse it.


def connect_error_once(sidecar_url: str) -> None:
    """One request on the session sidecar's ``/down`` route (nothing listens upstream)."""
    with httpx2.Client(timeout=30) as http:
        response = http.post(sidecar_url + "/down" + CHAT, json=chat_body())
    assert response.status_code == 502


# --- raw sockets ---------------------------------------------------------------------------------


def url_address(url: str | None) -> tuple[str, int]:
    """``(host, port)`` of a listener's ``http://host:port`` URL (IPv6 without brackets)."""
    assert url is not None
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def raw_connect(url: str | None, bound_s: float) -> socket.socket:
    """A plain TCP connection to a listener, for bytes no client library would send; every
    read on it is bounded by ``bound_s`` seconds."""
    return socket.create_connection(url_address(url), timeout=bound_s)


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (each read bounded by the socket timeout)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
