"""Resumable streams (``[resume]``, ``Last-Event-ID``, ``on_disconnect = "detach"``) against real
sidecar processes, the real simulator, and a real ``redis-server`` for the shared store."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from streamhop.middleware.errors import ConfigError
from streamhop.middleware.sse.events import SSEEvent
from streamhop.sidecar.config import config_from_dict
from streamhop.sidecar.resume import ResumeLogFullError, StreamNotFoundError
from streamhop.sidecar.resume.memory import MemoryStore
from tests.sidecar.test_faults import _metric
from tests.support import StreamhopProcess, start_streamhop

SLOW = {"x-sim-events-per-second": "20", "x-sim-tokens-per-second": "100"}
CHAT = "/v1/chat/completions"


def _chat(max_tokens: int, prompt: str) -> dict[str, Any]:
    return {
        "model": "sim",
        "stream": True,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private ``redis-server`` (no persistence) on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def dedicated() -> Iterator[list[StreamhopProcess]]:
    procs: list[StreamhopProcess] = []
    yield procs
    for proc in procs:
        proc.stop()


def _serve(
    tmp_path: Path,
    upstream: str,
    resume: str,
    on_disconnect: str = "cancel",
) -> StreamhopProcess:
    config = tmp_path / f"sidecar-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_timeout_s = 2

[resume]
{resume}

[[routes]]
prefix = "/"
upstream = "{upstream}"
on_disconnect = "{on_disconnect}"
"""
    )
    return start_streamhop("serve", "--config", str(config), "--log-level", "warning")


def _events(raw: bytes) -> tuple[list[dict[str, str]], bytes]:
    """Complete SSE events in ``raw`` (fields by name) and the incomplete rest."""
    blocks = raw.split(b"\n\n")
    events = []
    for block in blocks[:-1]:
        fields: dict[str, str] = {}
        for line in block.decode().split("\n"):
            name, _, value = line.partition(": ")
            fields[name] = fields[name] + "\n" + value if name in fields else value
        events.append(fields)
    return events, blocks[-1]


def _text(events: list[dict[str, str]]) -> str:
    parts = []
    for event in events:
        data = event.get("data")
        if data is None or data == "[DONE]":
            continue
        for choice in orjson.loads(data).get("choices", []):
            parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)


def _seqs(events: list[dict[str, str]], stream_id: str) -> list[int]:
    seqs = []
    for event in events:
        sid, _, seq = event["id"].partition(":")
        assert sid == stream_id
        seqs.append(int(seq))
    return seqs


def _read_some(url: str, body: dict[str, Any], headers: dict[str, str], count: int) -> Any:
    """Start a stream, read ``count`` complete events, then drop the connection."""
    with (
        httpx2.Client(timeout=30) as http,
        http.stream("POST", url, json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        stream_id = response.headers["x-streamhop-stream-id"]
        raw = b""
        for chunk in response.iter_raw():
            raw += chunk
            events, _ = _events(raw)
            if len(events) >= count:
                break
    return stream_id, events


def _resume(url: str, body: dict[str, Any], last_event_id: str) -> httpx2.Response:
    return httpx2.post(url, json=body, headers={"last-event-id": last_event_id}, timeout=30)


def _direct_text(simulator: StreamhopProcess, body: dict[str, Any]) -> str:
    raw = httpx2.post(simulator.url + CHAT, json=body, timeout=30).content
    return _text(_events(raw)[0])


def _sim_record(simulator: StreamhopProcess, rid: str, bound_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        for record in httpx2.get(simulator.url + "/_simulator/streams", timeout=10).json():
            if record["id"] == rid and record["outcome"] is not None:
                return dict(record)
        time.sleep(0.05)
    raise AssertionError(f"simulator never finished request {rid}")


def _drop_and_resume(
    simulator: StreamhopProcess, first: StreamhopProcess, second: StreamhopProcess
) -> tuple[str, list[dict[str, str]], list[dict[str, str]], httpx2.Response, float]:
    """Drop a slow stream on ``first`` after 3 events, resume it on ``second``; also returns
    when (``time.monotonic()``) the resume request was sent."""
    rid = uuid.uuid4().hex
    body = _chat(120, f"resume {rid}")
    stream_id, before = _read_some(first.url + CHAT, body, {**SLOW, "x-request-id": rid}, 3)
    sent_at = time.monotonic()
    resumed = _resume(second.url + CHAT, body, before[-1]["id"])
    after, rest = _events(resumed.content)
    assert rest == b""
    assert _seqs(before + after, stream_id) == list(range(1, len(before) + len(after) + 1))
    return rid, before, after, resumed, sent_at


def test_detach_memory_resume_has_no_gap_and_generation_completes(
    simulator: StreamhopProcess, tmp_path: Path, dedicated: list[StreamhopProcess]
) -> None:
    side = _serve(tmp_path, simulator.url, "enabled = true", on_disconnect="detach")
    dedicated.append(side)
    rid, before, after, resumed, _ = _drop_and_resume(simulator, side, side)
    assert resumed.status_code == 200
    assert resumed.headers["content-type"].startswith("text/event-stream")
    assert resumed.headers["x-streamhop-stream-id"] == before[0]["id"].split(":")[0]
    assert after[-1]["data"] == "[DONE]"
    assert _text(before + after) == _direct_text(simulator, _chat(120, f"resume {rid}"))
    assert _sim_record(simulator, rid)["outcome"] == "complete"
    # Resuming again from the start replays the whole finished log.
    again = _resume(side.url + CHAT, {}, before[0]["id"].split(":")[0] + ":0")
    assert _events(again.content)[0] == before + after


def test_cancel_memory_resume_returns_what_was_logged_then_ends(
    simulator: StreamhopProcess, tmp_path: Path, dedicated: list[StreamhopProcess]
) -> None:
    side = _serve(tmp_path, simulator.url, "enabled = true")
    dedicated.append(side)
    rid = uuid.uuid4().hex
    body = _chat(200, f"cancel {rid}")
    stream_id, before = _read_some(side.url + CHAT, body, {**SLOW, "x-request-id": rid}, 3)
    assert _sim_record(simulator, rid)["outcome"] == "client_closed"
    resumed = _resume(side.url + CHAT, body, before[-1]["id"])
    assert resumed.status_code == 200
    after, _ = _events(resumed.content)
    assert _seqs(before + after, stream_id) == list(range(1, len(before) + len(after) + 1))
    error = orjson.loads(after[-1]["data"])["error"]
    assert error["code"] == "stream_cancelled"
    full = _direct_text(simulator, body)
    partial = _text(before + after[:-1])
    assert full.startswith(partial) and len(partial) < len(full)


def test_unknown_stream_is_404_and_malformed_id_is_400(
    simulator: StreamhopProcess, tmp_path: Path, dedicated: list[StreamhopProcess]
) -> None:
    side = _serve(tmp_path, simulator.url, "enabled = true")
    dedicated.append(side)
    unknown = _resume(side.url + CHAT, _chat(5, "x"), "0123456789abcdef:3")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "stream_not_found"
    for bad in ("nocolon", "abc:x", "a b:1", ":4"):
        malformed = _resume(side.url + CHAT, _chat(5, "x"), bad)
        assert malformed.status_code == 400, bad
        assert malformed.json()["error"]["code"] == "bad_last_event_id"
    # Anthropic's error shape on an Anthropic path.
    anthropic = _resume(side.url + "/v1/messages", {}, "0123456789abcdef:1")
    assert anthropic.status_code == 404
    assert anthropic.json()["error"]["code"] == "stream_not_found"
    assert anthropic.json()["type"] == "error"


def test_resume_off_forwards_last_event_id_and_writes_no_ids(
    simulator: StreamhopProcess, sidecar: StreamhopProcess
) -> None:
    echoed = httpx2.post(
        sidecar.url + "/with-key/x", json={}, headers={"last-event-id": "abc:3"}, timeout=30
    ).json()
    assert ["last-event-id", "abc:3"] in echoed["headers"]
    raw = httpx2.post(sidecar.url + "/sim" + CHAT, json=_chat(10, "ids"), timeout=30).content
    assert b"\nid: " not in raw and not raw.startswith(b"id: ")


def test_redis_resume_on_another_replica_while_generating(
    simulator: StreamhopProcess,
    redis_url: str,
    tmp_path: Path,
    dedicated: list[StreamhopProcess],
) -> None:
    resume = (
        'enabled = true\nstore = "redis"\nbinding_key = "k"\n'
        f'redis_url = "{redis_url}"\nwindow_s = 60'
    )
    a = _serve(tmp_path, simulator.url, resume, on_disconnect="detach")
    dedicated.append(a)
    b = _serve(tmp_path, simulator.url, resume)
    dedicated.append(b)
    rid, before, after, resumed, sent_at = _drop_and_resume(simulator, a, b)
    record = _sim_record(simulator, rid)
    assert record["outcome"] == "complete"
    assert resumed.status_code == 200
    assert after[-1]["data"] == "[DONE]"
    assert _text(before + after) == _direct_text(simulator, _chat(120, f"resume {rid}"))
    # B followed the live tail: A's generation was still running when the resume reached B
    # (120 tokens at 100 tokens/s take over a second; the drop came after three events).
    assert record["ended"] > sent_at + 0.3
    assert b.admin_url is not None
    assert _metric(b.admin_url, "streamhop_resume_errors_total") == 0


def test_redis_down_streams_still_work_error_logged_once_and_counted(
    simulator: StreamhopProcess, tmp_path: Path, dedicated: list[StreamhopProcess]
) -> None:
    port = _free_port()  # nothing listens there
    resume = (
        'enabled = true\nstore = "redis"\nbinding_key = "k"\n'
        f'redis_url = "redis://127.0.0.1:{port}/0"'
    )
    side = _serve(tmp_path, simulator.url, resume)
    dedicated.append(side)
    assert side.admin_url is not None
    for i in range(3):
        body = _chat(20, f"down {i}")
        raw = httpx2.post(side.url + CHAT, json=body, timeout=30).content
        events, _ = _events(raw)
        assert events[-1]["data"] == "[DONE]"
        assert _text(events) == _direct_text(simulator, body)
    deadline = time.monotonic() + 10
    while _metric(side.admin_url, "streamhop_resume_errors_total", kind="write") < 3:
        assert time.monotonic() < deadline, "resume write errors were not counted"
        time.sleep(0.05)
    resumed = _resume(side.url + CHAT, {}, "0123456789abcdef:1")
    assert resumed.status_code == 503
    assert resumed.json()["error"]["code"] == "resume_unavailable"
    time.sleep(0.2)
    assert side.stderr.count("resume store redis failed") == 1, side.stderr


def test_config_detach_needs_resume_and_resume_is_accepted() -> None:
    route = {"prefix": "/", "upstream": "http://127.0.0.1:1", "on_disconnect": "detach"}
    with pytest.raises(ConfigError, match=r"routes\[0\]\.on_disconnect"):
        config_from_dict({"routes": [route]})
    config = config_from_dict(
        {"routes": [route], "resume": {"enabled": True, "store": "redis", "binding_key": "k"}}
    )
    assert config.resume.enabled and config.routes[0].on_disconnect == "detach"
    with pytest.raises(ConfigError, match=r"resume\.redis_url"):
        config_from_dict({"routes": [], "resume": {"redis_url": "http://x"}})


def test_memory_store_bounds() -> None:
    """Past max_stream_bytes a log closes (readers fail, counted); past max_streams the oldest
    finished log goes first; the ids keep counting whatever the log does."""

    async def scenario() -> None:
        errors: list[str] = []
        store = MemoryStore(
            window_s=60, max_streams=2, max_stream_bytes=1024, on_error=errors.append
        )
        big = store.open_writer("big", [], "big")
        reader = await store.open_reader("big", "big")
        stamped = big.stamp([SSEEvent(data="x" * 600), SSEEvent(data="y" * 600)])
        assert [e.id for e in stamped] == ["big:1", "big:2"]
        with pytest.raises(ResumeLogFullError):
            async for _ in reader.events_after(0):
                pass
        assert errors == ["log_full"]
        with pytest.raises(ResumeLogFullError):
            await store.open_reader("big", "big")
        big.close()
        live = store.open_writer("live", [], "live")
        live.stamp([SSEEvent(data="a")])
        store.open_writer("third", [], "third")  # evicts the finished "big", not the live one
        with pytest.raises(StreamNotFoundError):
            await store.open_reader("big", "big")
        live.close()
        batches = [list(b) async for b in (await store.open_reader("live", "live")).events_after(0)]
        assert batches == [[b"id: live:1\ndata: a\n\n"]]
        await store.aclose()

    asyncio.run(scenario())


def test_redis_log_over_its_byte_cap_is_closed_stream_goes_on(
    simulator: StreamhopProcess,
    redis_url: str,
    tmp_path: Path,
    dedicated: list[StreamhopProcess],
) -> None:
    resume = (
        'enabled = true\nstore = "redis"\nbinding_key = "k"\n'
        f'redis_url = "{redis_url}"\nmax_stream_bytes = 1024'
    )
    side = _serve(tmp_path, simulator.url, resume)
    dedicated.append(side)
    assert side.admin_url is not None
    body = _chat(300, "a long answer")
    response = httpx2.post(side.url + CHAT, json=body, timeout=30)
    events, _ = _events(response.content)
    assert events[-1]["data"] == "[DONE]"
    assert _text(events) == _direct_text(simulator, body)
    stream_id = response.headers["x-streamhop-stream-id"]
    resumed = _resume(side.url + CHAT, body, f"{stream_id}:1")
    assert resumed.status_code == 410
    assert resumed.json()["error"]["code"] == "resume_log_full"
    assert _metric(side.admin_url, "streamhop_resume_errors_total", kind="log_full") == 1


def test_detached_generation_is_cancelled_after_window(
    simulator: StreamhopProcess, tmp_path: Path, dedicated: list[StreamhopProcess]
) -> None:
    side = _serve(tmp_path, simulator.url, "enabled = true\nwindow_s = 1", on_disconnect="detach")
    dedicated.append(side)
    rid = uuid.uuid4().hex
    body = _chat(400, f"window {rid}")  # about 4 s at 100 tokens/s
    stream_id, before = _read_some(side.url + CHAT, body, {**SLOW, "x-request-id": rid}, 3)
    dropped_at = time.monotonic()
    record = _sim_record(simulator, rid)
    assert record["outcome"] == "client_closed"
    assert 0.8 < record["ended"] - dropped_at < 2.5
    resumed = _resume(side.url + CHAT, body, before[-1]["id"])
    after, _ = _events(resumed.content)
    assert orjson.loads(after[-1]["data"])["error"]["code"] == "stream_cancelled"
    assert _seqs(before + after, stream_id) == list(range(1, len(before) + len(after) + 1))


def test_shutdown_ends_a_resumed_stream_with_an_error_event(
    simulator: StreamhopProcess, tmp_path: Path, dedicated: list[StreamhopProcess]
) -> None:
    side = _serve(tmp_path, simulator.url, "enabled = true", on_disconnect="detach")
    dedicated.append(side)
    body = _chat(1000, "shutdown")  # about 10 s at 100 tokens/s
    _, before = _read_some(side.url + CHAT, body, SLOW, 3)
    with (
        httpx2.Client(timeout=30) as http,
        http.stream(
            "POST", side.url + CHAT, json=body, headers={"last-event-id": before[-1]["id"]}
        ) as resumed,
    ):
        assert resumed.status_code == 200
        side.proc.send_signal(signal.SIGTERM)  # drain_timeout_s = 2, then open streams stop
        raw = b"".join(resumed.iter_raw())
    after, rest = _events(raw)
    assert rest == b""
    assert orjson.loads(after[-1]["data"])["error"]["code"] == "shutdown"
    assert side.proc.wait(15) == 0
