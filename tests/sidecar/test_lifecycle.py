"""Stream lifecycle against the real sidecar and the real simulator: cancellation reaches the
provider, limits answer at once, slow clients stay bounded, and shutdown drains."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import h11
import httpx2
import orjson
import psutil
import pytest

from tests.sidecar.test_faults import _metric, _wait_closed
from tests.sidecar.upstreams import BURST_PIECE
from tests.support import BackgroundAiohttp, StreamhopProcess, start_streamhop

SLOW = {"x-sim-events-per-second": "20", "x-sim-tokens-per-second": "100"}


def _chat(max_tokens: int, stream: bool = True, prompt: str = "hi") -> dict[str, Any]:
    return {
        "model": "sim",
        "stream": stream,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }


def _sim_record(simulator: StreamhopProcess, rid: str, bound_s: float = 10.0) -> dict[str, Any]:
    """The simulator's log entry for request ``rid`` once it has an outcome."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        records = httpx2.get(simulator.url + "/_simulator/streams", timeout=10).json()
        for record in records:
            if record["id"] == rid and record["outcome"] is not None:
                return dict(record)
        time.sleep(0.02)
    raise AssertionError(f"simulator never finished request {rid}")


def _serve(tmp_path: Path, upstream: str, extra: str = "") -> StreamhopProcess:
    config = tmp_path / f"sidecar-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{extra}

[[routes]]
prefix = "/"
upstream = "{upstream}"
"""
    )
    return start_streamhop("serve", "--config", str(config), "--log-level", "warning")


@pytest.fixture
def dedicated(tmp_path: Path) -> Iterator[list[StreamhopProcess]]:
    """Sidecars a test starts itself; stopped at the end whatever happens."""
    procs: list[StreamhopProcess] = []
    yield procs
    for proc in procs:
        proc.stop()


def test_client_disconnect_mid_stream_closes_upstream(
    simulator: StreamhopProcess, sidecar: StreamhopProcess
) -> None:
    assert sidecar.admin_url is not None
    before = _metric(sidecar.admin_url, "streamhop_cancellations_total", reason="client_disconnect")
    rid = uuid.uuid4().hex
    with (
        httpx2.Client(timeout=30) as http,
        http.stream(
            "POST",
            sidecar.url + "/sim/v1/chat/completions",
            json=_chat(200),
            headers={**SLOW, "x-request-id": rid},
        ) as response,
    ):
        seen = b""
        for chunk in response.iter_raw():
            seen += chunk
            if seen.count(b'"content":"') >= 3:
                break
        closed_at = time.monotonic()
    record = _sim_record(simulator, rid)
    assert record["outcome"] == "client_closed"
    # The 200-token answer would take 10 s; the provider saw the close long before.
    assert record["ended"] - closed_at < 2.0
    after = _metric(sidecar.admin_url, "streamhop_cancellations_total", reason="client_disconnect")
    assert after == before + 1
    assert _metric(sidecar.admin_url, "streamhop_cancel_latency_seconds_count") >= 1


def test_client_disconnect_before_first_token_closes_upstream(
    simulator: StreamhopProcess, sidecar: StreamhopProcess
) -> None:
    rid = uuid.uuid4().hex
    with (
        httpx2.Client(timeout=30) as http,
        http.stream(
            "POST",
            sidecar.url + "/sim/v1/chat/completions",
            json=_chat(50),
            headers={"x-sim-ttft-ms": "20000", "x-request-id": rid},
        ) as response,
    ):
        assert response.status_code == 200
        time.sleep(0.2)
        closed_at = time.monotonic()
    record = _sim_record(simulator, rid)
    assert record["outcome"] == "client_closed"
    assert record["first_content"] is None
    assert record["ended"] - closed_at < 2.0


def test_client_disconnect_during_non_streaming_request_closes_upstream(
    simulator: StreamhopProcess, sidecar: StreamhopProcess
) -> None:
    rid = uuid.uuid4().hex
    with pytest.raises(httpx2.ReadTimeout), httpx2.Client(timeout=0.5) as http:
        http.post(
            sidecar.url + "/sim/v1/chat/completions",
            json=_chat(50, stream=False),
            headers={"x-sim-ttft-ms": "20000", "x-request-id": rid},
        )
    closed_at = time.monotonic()
    record = _sim_record(simulator, rid)
    assert record["outcome"] == "client_closed"
    assert record["ended"] - closed_at < 2.0


def test_max_streams_answers_503_with_retry_after(
    simulator: StreamhopProcess, tmp_path: Path, dedicated: list[StreamhopProcess]
) -> None:
    side = _serve(tmp_path, simulator.url, "max_streams = 2")
    dedicated.append(side)

    async def scenario() -> tuple[int, str | None, int]:
        async with aiohttp.ClientSession() as session:
            url = side.url + "/v1/chat/completions"
            open_streams = [
                await session.post(url, json=_chat(200), headers=SLOW) for _ in range(2)
            ]
            third = await session.post(url, json=_chat(5))
            status, retry_after = third.status, third.headers.get("Retry-After")
            third.close()
            for response in open_streams:
                response.close()
            for _ in range(100):  # the slots free up as the sidecar sees the closes
                await asyncio.sleep(0.05)
                again = await session.post(url, json=_chat(5))
                await again.read()
                if again.status == 200:
                    return status, retry_after, 200
            return status, retry_after, again.status

    status, retry_after, later = asyncio.run(scenario())
    assert status == 503
    assert retry_after == "1"
    assert later == 200


def test_stalled_client_is_dropped_and_upstream_cancelled(
    scripted_upstream: BackgroundAiohttp, tmp_path: Path, dedicated: list[StreamhopProcess]
) -> None:
    """The client stops reading; once the kernel buffers are full the sidecar's write blocks,
    and after stall_timeout_s the client is dropped and the provider's connection closed."""
    side = _serve(
        tmp_path,
        scripted_upstream.url,
        "[backpressure]\nstall_timeout_s = 1\nmax_pending_bytes = 65536",
    )
    dedicated.append(side)
    assert side.admin_url is not None
    rid = uuid.uuid4().hex
    host, port = side.url.removeprefix("http://").split(":")
    body = orjson.dumps(_chat(1))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    try:
        sock.sendall(
            b"POST /burst/200000000 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            b"x-request-id: " + rid.encode() + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        # Never read: the sidecar's socket buffers fill, its write blocks, the stall fires.
        _wait_closed(rid, bound_s=60)
    finally:
        sock.close()
    assert _metric(side.admin_url, "streamhop_cancellations_total", reason="stall") == 1


def test_slow_client_keeps_memory_bounded_and_text_intact(
    scripted_upstream: BackgroundAiohttp, sidecar: StreamhopProcess
) -> None:
    """~5 MB of text bursts from the provider while the client reads slowly through a small
    receive buffer: the sidecar holds at most max_pending_bytes, not the whole answer."""
    size = 5_000_000
    proc = psutil.Process(sidecar.proc.pid)
    rss_before = proc.memory_info().rss
    peak = [rss_before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    host, port = sidecar.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect((host, int(port)))
    sock.settimeout(30)
    conn = h11.Connection(h11.CLIENT)
    body = orjson.dumps(_chat(1))
    sock.sendall(
        conn.send(
            h11.Request(
                method="POST",
                target=f"/burst/{size}",
                headers=[
                    ("Host", "127.0.0.1"),
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                ],
            )
        )
        + conn.send(h11.Data(data=body))
        + conn.send(h11.EndOfMessage())
    )
    received = bytearray()
    started = time.monotonic()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(8192))
                time.sleep(0.001)  # a slow reader
            elif isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            assert time.monotonic() - started < 120
    finally:
        done.set()
        sock.close()
        sampler.join(5)
    text = []
    for block in bytes(received).decode("utf-8").split("\n\n"):
        if block.startswith("data: {"):
            for choice in orjson.loads(block[6:])["choices"]:
                text.append(choice["delta"].get("content") or "")
    joined = "".join(text)
    pieces = -(-size // len(BURST_PIECE.encode()))
    assert joined == BURST_PIECE * pieces
    assert "\ufffd" not in joined
    growth_mb = (peak[0] - rss_before) / 1e6
    assert growth_mb < 50, f"sidecar RSS grew {growth_mb:.1f} MB"


def test_300_concurrent_streams_complete_with_correct_content(
    simulator: StreamhopProcess, sidecar: StreamhopProcess
) -> None:
    prompts = [f"prompt number {i}" for i in range(10)]

    async def text_of(session: aiohttp.ClientSession, base: str, prompt: str) -> str:
        async with session.post(
            base + "/v1/chat/completions", json=_chat(100, prompt=prompt)
        ) as response:
            assert response.status == 200
            raw = await response.read()
        parts = []
        for block in raw.decode("utf-8").split("\n\n"):
            if block.startswith("data: {"):
                for choice in orjson.loads(block[6:])["choices"]:
                    parts.append(choice["delta"].get("content") or "")
        return "".join(parts)

    async def scenario() -> tuple[dict[str, str], list[tuple[str, str]]]:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            expected = {p: await text_of(session, simulator.url, p) for p in prompts}
            jobs = [prompts[i % len(prompts)] for i in range(300)]
            got = await asyncio.gather(*(text_of(session, sidecar.url + "/sim", p) for p in jobs))
            return expected, list(zip(jobs, got, strict=True))

    expected, results = asyncio.run(scenario())
    assert len(results) == 300
    for prompt, text in results:
        assert text == expected[prompt]
        assert text


def test_sigterm_drains_then_stops_streams_with_error_event(
    simulator: StreamhopProcess, tmp_path: Path, dedicated: list[StreamhopProcess]
) -> None:
    side = _serve(tmp_path, simulator.url, "drain_timeout_s = 1.5")
    dedicated.append(side)
    assert side.admin_url is not None
    long_rid = uuid.uuid4().hex
    results: dict[str, bytes] = {}

    def read(name: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        with httpx2.Client(timeout=30) as http:
            results[name] = http.post(
                side.url + "/v1/chat/completions", json=body, headers=headers
            ).content

    # A short stream (about 0.5 s) that finishes within the drain, and a long one (10 s) that
    # does not.
    short = threading.Thread(
        target=read,
        args=(
            "short",
            _chat(10),
            {"x-sim-events-per-second": "20", "x-sim-tokens-per-second": "20"},
        ),
    )
    long = threading.Thread(
        target=read, args=("long", _chat(200), {**SLOW, "x-request-id": long_rid})
    )
    short.start()
    long.start()
    time.sleep(0.3)
    side.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    ready = httpx2.get(side.admin_url + "/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    with pytest.raises(httpx2.ConnectError), httpx2.Client(timeout=5) as http:
        http.post(side.url + "/v1/chat/completions", json=_chat(5))
    short.join(30)
    long.join(30)
    assert side.proc.wait(30) == 0
    assert results["short"].rstrip().endswith(b"data: [DONE]")
    last = results["long"].rstrip().split(b"\n\n")[-1]
    assert last.startswith(b"data: ")
    assert orjson.loads(last[6:])["error"]["code"] == "shutdown"
    assert _sim_record(simulator, long_rid)["outcome"] == "client_closed"
