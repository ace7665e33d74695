"""``[server] workers > 1`` with real processes: a supervisor, its workers on one port, the real
simulator upstream.

Which worker serves a connection is read from the kernel (each worker's established sockets on
the proxy port, through psutil), not from anything streamhop adds to a response.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h11
import httpx2
import orjson
import psutil
import pytest

from tests.support import (
    CHAT,
    SLOW_SIM,
    StreamhopProcess,
    chat_body,
    delta,
    metric,
    serve,
    sidecar_config,
    sim_started,
    sse_data,
    wait_for,
    wait_idle,
)

WORKERS = 2
StartWorkers = Callable[..., StreamhopProcess]
"""``start_workers(upstream, *, server="", sections="")``: see the fixture."""


@pytest.fixture
def start_workers(tmp_path: Path) -> Iterator[StartWorkers]:
    """Start supervisors with ``workers = 2`` (log level info: the restart lines); each is
    stopped at the end, whatever happens."""
    procs: list[StreamhopProcess] = []

    def start(upstream: str, *, server: str = "", sections: str = "") -> StreamhopProcess:
        config = sidecar_config(
            upstream, server=f"workers = {WORKERS}\n{server}", sections=sections
        )
        proc = serve(tmp_path, config, log_level="info")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop(timeout_s=30)


def _workers(side: StreamhopProcess) -> list[psutil.Process]:
    return psutil.Process(side.proc.pid).children()


def _port(side: StreamhopProcess) -> int:
    return int(side.url.rsplit(":", 1)[1])


def _connections_per_worker(side: StreamhopProcess) -> dict[int, int]:
    """Established connections on the proxy port, per worker pid."""
    port = _port(side)
    counts = {}
    for worker in _workers(side):
        with_port = [
            c
            for c in worker.net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        ]
        counts[worker.pid] = len(with_port)
    return counts


def _stream(url: str, body: dict[str, Any], headers: dict[str, str], out: list[bytes]) -> None:
    with httpx2.Client(timeout=60) as http:
        out.append(http.post(url + CHAT, json=body, headers=headers).content)


def _open_streams(
    side: StreamhopProcess, simulator: StreamhopProcess, count: int, max_tokens: int
) -> tuple[list[threading.Thread], list[bytes]]:
    """Start ``count`` slow streams (:data:`SLOW_SIM`: 100 tokens a second) in threads; return
    once the simulator has all of them, with the list their bodies are appended to."""
    rids = [uuid.uuid4().hex for _ in range(count)]
    bodies: list[bytes] = []
    threads = [
        threading.Thread(
            target=_stream,
            args=(
                side.url,
                chat_body(max_tokens=max_tokens),
                {**SLOW_SIM, "x-request-id": rid},
                bodies,
            ),
        )
        for rid in rids
    ]
    for thread in threads:
        thread.start()
    wait_for(
        lambda: all(sim_started(simulator.url, rid) for rid in rids), 20, "every stream to start"
    )
    return threads, bodies


def _events(raw: bytes) -> int:
    """SSE events received (``[DONE]`` is one)."""
    return len(sse_data(raw))


def _hold(url: str, started: threading.Semaphore, release: threading.Event) -> None:
    """One stream read until its first bytes, held open until ``release``, then left."""
    with (
        httpx2.Client(timeout=60) as http,
        http.stream("POST", url + CHAT, json=chat_body(max_tokens=1000), headers=SLOW_SIM) as r,
    ):
        chunks = r.iter_bytes()  # kept: a dropped iterator closes the response
        next(chunks)
        started.release()
        release.wait(60)


def test_both_workers_serve_and_metrics_count_each_stream_once(
    simulator: StreamhopProcess, start_workers: StartWorkers
) -> None:
    side = start_workers(simulator.url)
    assert side.admin_url is not None
    assert len(_workers(side)) == WORKERS
    ready = httpx2.get(side.admin_url + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["workers_ready"] == WORKERS
    assert metric(side.admin_url, "streamhop_workers") == WORKERS

    # Streams held open: the kernel spreads their connections over both workers' queues.
    held = 16
    started, release = threading.Semaphore(0), threading.Event()
    holders = [
        threading.Thread(target=_hold, args=(side.url, started, release)) for _ in range(held)
    ]
    for thread in holders:
        thread.start()
    for _ in range(held):
        assert started.acquire(timeout=20), "a held stream did not start"
    per_worker = _connections_per_worker(side)
    release.set()
    for thread in holders:
        thread.join(30)
    assert sum(per_worker.values()) == held, per_worker
    assert all(n >= 1 for n in per_worker.values()), per_worker
    before = wait_idle(side.admin_url, route="/")
    assert before.value("streamhop_cancellations_total", reason="client_disconnect") == held

    # Whole streams: each is in the one /metrics once, whichever worker served it.
    count = 10
    bodies = [
        httpx2.post(side.url + CHAT, json=chat_body(max_tokens=20), timeout=30).content
        for _ in range(count)
    ]
    after = wait_idle(side.admin_url, route="/")
    duration = "streamhop_stream_duration_seconds_count"
    assert delta(before, after, duration, route="/") == count
    sent = sum(_events(body) for body in bodies)
    assert delta(before, after, "streamhop_events_total", direction="downstream") == sent
    assert after.value(duration, route="/") == held + count
    assert after.value("streamhop_streams_active", route="/") == 0
    assert not any("pid" in s.labels for s in after.samples())
    assert side.stop(timeout_s=30) == 0


def test_sigterm_drains_every_worker_within_drain_timeout(
    simulator: StreamhopProcess, start_workers: StartWorkers
) -> None:
    drain_s = 1.5
    side = start_workers(simulator.url, server=f"drain_timeout_s = {drain_s}")
    assert side.admin_url is not None
    count = 12
    threads, bodies = _open_streams(side, simulator, count, max_tokens=1000)
    per_worker = _connections_per_worker(side)
    workers = _workers(side)
    signalled = time.monotonic()
    side.proc.send_signal(signal.SIGTERM)
    wait_for(
        lambda: httpx2.get(side.admin_url + "/readyz", timeout=5).status_code == 503,
        5,
        "/readyz to say draining",
    )
    assert side.proc.wait(30) == 0
    elapsed = time.monotonic() - signalled
    for thread in threads:
        thread.join(10)
    # Streams past the drain end with the shutdown error event, in every worker.
    assert len(bodies) == count, per_worker
    for body in bodies:
        last = body.rstrip().split(b"\n\n")[-1]
        assert orjson.loads(last[6:])["error"]["code"] == "shutdown"
    assert elapsed < drain_s + 3, elapsed
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert "every worker has exited" in side.stderr


def test_killed_worker_is_replaced_and_counted(
    simulator: StreamhopProcess, start_workers: StartWorkers
) -> None:
    side = start_workers(simulator.url)
    assert side.admin_url is not None
    victim = _workers(side)[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    wait_for(
        lambda: metric(side.admin_url, "streamhop_worker_restarts_total") == 1,
        10,
        "the restart to be counted",
    )
    wait_for(
        lambda: httpx2.get(side.admin_url + "/readyz", timeout=5).status_code == 200,
        20,
        "the replacement to be ready",
    )
    pids = {w.pid for w in _workers(side)}
    assert len(pids) == WORKERS and victim.pid not in pids
    assert metric(side.admin_url, "streamhop_workers") == WORKERS
    line = f"(pid {victim.pid}) exited: signal SIGKILL; starting another"
    wait_for(lambda: line in side.stderr, 10, "the restart's log line")
    for _ in range(4):
        response = httpx2.post(side.url + CHAT, json=chat_body(max_tokens=5), timeout=30)
        assert response.status_code == 200
        assert response.content.rstrip().endswith(b"data: [DONE]")
    assert side.stop(timeout_s=30) == 0


def test_sighup_starts_new_workers_and_old_streams_finish(
    simulator: StreamhopProcess, start_workers: StartWorkers
) -> None:
    side = start_workers(simulator.url, server="drain_timeout_s = 20")
    assert side.admin_url is not None
    old = {w.pid for w in _workers(side)}
    # About 5 s long (500 tokens at 100 a second): still running when the new workers serve.
    (thread,), bodies = _open_streams(side, simulator, 1, max_tokens=500)
    side.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "new worker(s) serve" in side.stderr, 30, "the new workers")
    assert thread.is_alive()
    new = {w.pid for w in _workers(side)} - old
    assert len(new) == WORKERS
    thread.join(30)
    assert bodies and bodies[0].rstrip().endswith(b"data: [DONE]")
    wait_for(lambda: {w.pid for w in _workers(side)} == new, 30, "the old workers to exit")
    assert httpx2.get(side.admin_url + "/readyz", timeout=5).status_code == 200
    response = httpx2.post(side.url + CHAT, json=chat_body(max_tokens=5), timeout=30)
    assert response.content.rstrip().endswith(b"data: [DONE]")
    assert metric(side.admin_url, "streamhop_worker_restarts_total") == 0
    assert side.stop(timeout_s=30) == 0


def test_sighup_with_an_invalid_config_changes_nothing(
    simulator: StreamhopProcess, start_workers: StartWorkers
) -> None:
    side = start_workers(simulator.url)
    assert side.admin_url is not None
    pids = {w.pid for w in _workers(side)}
    config = Path(side.argv[side.argv.index("--config") + 1])
    config.write_text(config.read_text() + "\n[server]\nworkers = 0\n")
    side.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: config not reloaded" in side.stderr, 10, "the reload to fail")
    assert {w.pid for w in _workers(side)} == pids
    assert httpx2.get(side.admin_url + "/readyz", timeout=5).status_code == 200
    response = httpx2.post(side.url + CHAT, json=chat_body(max_tokens=5), timeout=30)
    assert response.content.rstrip().endswith(b"data: [DONE]")
    assert side.stop(timeout_s=30) == 0


def _serve_fails(tmp_path: Path, config: str, *flags: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "streamhop.toml"
    path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "streamhop.sidecar.cli", "serve", "--config", str(path), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("workers_key", "flags"), [("workers = 2", ()), ("", ("--workers", "2"))])
def test_memory_resume_store_with_workers_is_a_config_error(
    tmp_path: Path, workers_key: str, flags: tuple[str, ...]
) -> None:
    config = sidecar_config(
        "http://127.0.0.1:9", server=workers_key, sections="[resume]\nenabled = true"
    )
    result = _serve_fails(tmp_path, config, *flags)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("streamhop serve: invalid config server.workers: ")
    assert 'store = "redis"' in lines[0]


def test_proxy_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket_listening() as port:
        config = sidecar_config("http://127.0.0.1:9", server="workers = 2").replace(
            'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"', 1
        )
        result = _serve_fails(tmp_path, config)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"streamhop serve: cannot listen on 127.0.0.1:{port} for the proxy listener "
        "([server] listen / --listen): address already in use"
    ]


@contextlib.contextmanager
def socket_listening() -> Iterator[int]:
    """A loopback socket listening (without ``SO_REUSEPORT``) on a free port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


class _RawStream:
    """One POST over a socket of the test's own (h11), so the worker that accepted it can be
    told from the kernel by the socket's local port."""

    def __init__(self, side: StreamhopProcess, headers: dict[str, str]) -> None:
        host, port = side.url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.conn = h11.Connection(h11.CLIENT)
        body = orjson.dumps(chat_body(max_tokens=300))
        head = [("host", f"{host}:{port}"), ("content-type", "application/json")]
        head += [("content-length", str(len(body))), *headers.items()]
        self.sock.sendall(
            self.conn.send(h11.Request(method="POST", target=CHAT, headers=head))
            + self.conn.send(h11.Data(data=body))
            + self.conn.send(h11.EndOfMessage())
        )
        response = self._next()
        assert isinstance(response, h11.Response), response
        self.status = response.status_code
        self.headers = {k.decode(): v.decode() for k, v in response.headers}
        port_here = self.sock.getsockname()[1]
        self.worker = next(
            w.pid
            for w in _workers(side)
            for c in w.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port_here
        )

    def _next(self) -> Any:
        while (event := self.conn.next_event()) is h11.NEED_DATA:
            self.conn.receive_data(self.sock.recv(65536))
        return event

    def read_all(self) -> list[Any]:
        """The rest of the body as its SSE data (``[DONE]`` included); closes the socket."""
        raw = b""
        while not isinstance(event := self._next(), h11.EndOfMessage):
            raw += event.data
        self.sock.close()
        return sse_data(raw)


def test_a_resume_on_the_other_worker_replays_and_follows_through_redis(
    simulator: StreamhopProcess, start_workers: StartWorkers, shared_redis: str
) -> None:
    # The workers share the resume log as replicas do: Redis, one binding key.
    keys = {"enabled": "true", "store": '"redis"', "redis_url": f'"{shared_redis}"'}
    keys["binding_key"] = '"shared-by-workers"'
    resume = "[resume]\n" + "\n".join(f"{key} = {value}" for key, value in keys.items())
    side = start_workers(simulator.url, sections=resume)
    # 300 tokens at 100 a second: about 3 s, for the resumes to land while it generates.
    original = _RawStream(side, SLOW_SIM)
    assert original.status == 200
    stream_id = original.headers["x-streamhop-stream-id"]
    first: list[Any] = []
    reader = threading.Thread(target=lambda: first.extend(original.read_all()))
    reader.start()
    # New connections land on either worker (the kernel hashes their addresses): resume until
    # one is served by the other worker than the generation's.
    for _ in range(40):
        resumed = _RawStream(side, {**SLOW_SIM, "last-event-id": f"{stream_id}:2"})
        if resumed.worker != original.worker:
            break
        resumed.sock.close()  # the client leaves: this resume ends
    else:
        raise AssertionError("40 connections all landed on the generation's worker")
    assert resumed.status == 200
    assert resumed.headers["x-streamhop-stream-id"] == stream_id
    tail = resumed.read_all()
    reader.join(30)
    assert first[-1] == "[DONE]" and len(first) > 3
    assert tail == first[2:]
    assert metric(side.admin_url, "streamhop_resume_errors_total") == 0
    assert side.stop(timeout_s=30) == 0
