"""Stream lifecycle against the real sidecar and the real simulator: cancellation reaches the
provider, limits answer at once, slow clients stay bounded, and shutdown drains."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
import uuid
from typing import Any

import aiohttp
import h11
import httpx2
import orjson
import psutil
import pytest

from tests.sidecar.upstreams import BURST_PIECE, wait_closed
from tests.support import (
    CHAT,
    SLOW_SIM,
    BackgroundAiohttp,
    StartSidecar,
    StreamhopProcess,
    chat_body,
    chat_text,
    delta,
    metric,
    refuses_connections,
    sim_record,
    sim_started,
    sse_data,
    wait_for,
    wait_idle,
)


def test_client_disconnect_mid_stream_closes_upstream(
    simulator: StreamhopProcess, sidecar: StreamhopProcess
) -> None:
    assert sidecar.admin_url is not None
    # Other tests share this sidecar: count from a moment when none of their requests is still
    # being recorded, to one when this one is.
    before = wait_idle(sidecar.admin_url, "/sim")
    rid = uuid.uuid4().hex
    with (
        httpx2.Client(timeout=30) as http,
        http.stream(
            "POST",
            sidecar.url + "/sim" + CHAT,
            json=chat_body(max_tokens=200),
            headers={**SLOW_SIM, "x-request-id": rid},
        ) as response,
    ):
        seen = b""
        for chunk in response.iter_raw():
            seen += chunk
            if seen.count(b'"content":"') >= 3:
                break
        closed_at = time.monotonic()
    record = sim_record(simulator.url, rid)
    # The 200-token answer takes 2 s: the provider saw the close, not the end.
    assert record["outcome"] == "client_closed"
    assert record["ended"] - closed_at < 2.0
    after = wait_idle(sidecar.admin_url, "/sim")
    name = "streamhop_cancellations_total"
    assert delta(before, after, name, route="/sim", reason="client_disconnect") == 1
    assert delta(before, after, "streamhop_cancel_latency_seconds_count", route="/sim") == 1


def test_client_disconnect_before_first_token_closes_upstream(
    simulator: StreamhopProcess, sidecar: StreamhopProcess
) -> None:
    rid = uuid.uuid4().hex
    with (
        httpx2.Client(timeout=30) as http,
        http.stream(
            "POST",
            sidecar.url + "/sim" + CHAT,
            json=chat_body(max_tokens=50),
            headers={"x-sim-ttft-ms": "20000", "x-request-id": rid},
        ) as response,
    ):
        assert response.status_code == 200
        # Leave while the provider waits out its time to first token, not before it has the
        # request.
        wait_for(lambda: sim_started(simulator.url, rid), 10, "the simulator to have the request")
        closed_at = time.monotonic()
    record = sim_record(simulator.url, rid)
    assert record["outcome"] == "client_closed"
    assert record["first_content"] is None
    assert record["ended"] - closed_at < 2.0


def test_client_disconnect_during_non_streaming_request_closes_upstream(
    simulator: StreamhopProcess, sidecar: StreamhopProcess
) -> None:
    rid = uuid.uuid4().hex
    with pytest.raises(httpx2.ReadTimeout), httpx2.Client(timeout=0.5) as http:
        http.post(
            sidecar.url + "/sim" + CHAT,
            json=chat_body(max_tokens=50, stream=False),
            headers={"x-sim-ttft-ms": "20000", "x-request-id": rid},
        )
    closed_at = time.monotonic()
    record = sim_record(simulator.url, rid)
    assert record["outcome"] == "client_closed"
    assert record["ended"] - closed_at < 2.0


def test_max_streams_answers_503_with_retry_after(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = start_sidecar(simulator.url, server="max_streams = 2")
    assert side.admin_url is not None
    admin_url = side.admin_url

    async def scenario() -> tuple[int, str | None, int]:
        async with aiohttp.ClientSession() as session:
            url = side.url + CHAT
            open_streams = [
                await session.post(url, json=chat_body(max_tokens=200), headers=SLOW_SIM)
                for _ in range(2)
            ]
            third = await session.post(url, json=chat_body(max_tokens=5))
            status, retry_after = third.status, third.headers.get("Retry-After")
            third.close()
            for response in open_streams:
                response.close()
            # The slots are free once the sidecar has ended both streams.
            await asyncio.to_thread(wait_idle, admin_url, "/")
            again = await session.post(url, json=chat_body(max_tokens=5))
            await again.read()
            return status, retry_after, again.status

    status, retry_after, later = asyncio.run(scenario())
    assert status == 503
    assert retry_after == "1"
    assert later == 200


def test_stalled_client_is_dropped_and_upstream_cancelled(
    scripted_upstream: BackgroundAiohttp, start_sidecar: StartSidecar
) -> None:
    """The client stops reading; once the kernel buffers are full the sidecar's write blocks,
    and after stall_timeout_s the client is dropped and the provider's connection closed."""
    side = start_sidecar(
        scripted_upstream.url,
        sections="[backpressure]\nstall_timeout_s = 1\nmax_pending_bytes = 65536",
    )
    assert side.admin_url is not None
    rid = uuid.uuid4().hex
    host, port = side.url.removeprefix("http://").split(":")
    body = orjson.dumps(chat_body(max_tokens=1))
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
        wait_closed(rid, bound_s=60)
    finally:
        sock.close()
    wait_idle(side.admin_url, "/")
    assert metric(side.admin_url, "streamhop_cancellations_total", reason="stall") == 1


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
        while not done.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    host, port = sidecar.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect((host, int(port)))
    sock.settimeout(30)
    conn = h11.Connection(h11.CLIENT)
    body = orjson.dumps(chat_body(max_tokens=1))
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
    joined = chat_text(sse_data(bytes(received)))
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
        async with session.post(base + CHAT, json=chat_body(prompt, 100)) as response:
            assert response.status == 200
            raw = await response.read()
        return chat_text(sse_data(raw))

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
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = start_sidecar(simulator.url, server="drain_timeout_s = 1.5")
    assert side.admin_url is not None
    short_rid, long_rid = uuid.uuid4().hex, uuid.uuid4().hex
    results: dict[str, bytes] = {}

    def read(name: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        with httpx2.Client(timeout=30) as http:
            results[name] = http.post(side.url + CHAT, json=body, headers=headers).content

    # A short stream (about 0.5 s) that finishes within the drain, and a long one (10 s) that
    # does not.
    short = threading.Thread(
        target=read,
        args=(
            "short",
            chat_body(max_tokens=10),
            {
                "x-sim-events-per-second": "20",
                "x-sim-tokens-per-second": "20",
                "x-request-id": short_rid,
            },
        ),
    )
    long = threading.Thread(
        target=read,
        args=("long", chat_body(max_tokens=1000), {**SLOW_SIM, "x-request-id": long_rid}),
    )
    short.start()
    long.start()
    wait_for(
        lambda: sim_started(simulator.url, short_rid) and sim_started(simulator.url, long_rid),
        10,
        "both streams to reach the provider",
    )
    side.proc.send_signal(signal.SIGTERM)
    # Draining: the proxy listener closes (readyz turned 503 before that).
    wait_for(lambda: refuses_connections(side.url), 10, "the proxy listener to close")
    ready = httpx2.get(side.admin_url + "/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    with pytest.raises(httpx2.ConnectError), httpx2.Client(timeout=5) as http:
        http.post(side.url + CHAT, json=chat_body(max_tokens=5))
    short.join(30)
    long.join(30)
    assert side.proc.wait(30) == 0
    assert results["short"].rstrip().endswith(b"data: [DONE]")
    last = results["long"].rstrip().split(b"\n\n")[-1]
    assert last.startswith(b"data: ")
    assert orjson.loads(last[6:])["error"]["code"] == "shutdown"
    assert sim_record(simulator.url, long_rid)["outcome"] == "client_closed"
