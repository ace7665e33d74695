"""Resumable streams (``[resume]``, ``Last-Event-ID``, ``on_disconnect = "detach"``) against real
sidecar processes, the real simulator, and a real ``redis-server`` for the shared store."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import orjson
import pytest

from tests.cluster import redis_server
from tests.support import (
    CHAT,
    SLOW_SIM,
    StartSidecar,
    StreamhopProcess,
    chat_body,
    chat_text,
    free_port,
    metric,
    sim_record,
    sse_events,
    wait_for,
)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One private ``redis-server`` for this module's tests (tests/cluster.py)."""
    with redis_server() as url:
        yield url


def _start(
    start_sidecar: StartSidecar, upstream: str, resume: str, on_disconnect: str = "cancel"
) -> StreamhopProcess:
    """A sidecar of the test's own with ``[resume]`` set to ``resume``."""
    return start_sidecar(
        upstream,
        server="drain_timeout_s = 2",
        sections=f"[resume]\n{resume}",
        route=f'on_disconnect = "{on_disconnect}"',
    )


def _text(events: list[dict[str, str]]) -> str:
    """The chat text of ``events``; every data but ``[DONE]`` must be JSON."""
    return chat_text(
        orjson.loads(e["data"]) for e in events if e.get("data") not in (None, "[DONE]")
    )


def _seqs(events: list[dict[str, str]], stream_id: str) -> list[int]:
    seqs = []
    for event in events:
        sid, _, seq = event["id"].partition(":")
        assert sid == stream_id
        seqs.append(int(seq))
    return seqs


@dataclass(frozen=True)
class Dropped:
    """A stream a client left after a few events."""

    stream_id: str
    events: list[dict[str, str]]
    """The complete events the client read."""
    closing_at: float
    """``time.monotonic()`` just before the client closed the connection."""


def _read_some(url: str, body: dict[str, Any], headers: dict[str, str], count: int) -> Dropped:
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
            events, _ = sse_events(raw)
            if len(events) >= count:
                break
        closing_at = time.monotonic()
    return Dropped(stream_id, events, closing_at)


def _resume(url: str, body: dict[str, Any], last_event_id: str) -> httpx2.Response:
    return httpx2.post(url, json=body, headers={"last-event-id": last_event_id}, timeout=30)


@dataclass(frozen=True)
class Resumed:
    """A resume request read to its end."""

    response: httpx2.Response
    raw: bytes
    first_byte_at: float
    """``time.monotonic()`` when the first body bytes arrived."""


def _resume_streamed(url: str, body: dict[str, Any], last_event_id: str) -> Resumed:
    with (
        httpx2.Client(timeout=30) as http,
        http.stream("POST", url, json=body, headers={"last-event-id": last_event_id}) as response,
    ):
        chunks = response.iter_raw()
        first = next(chunks, b"")
        first_byte_at = time.monotonic()
        raw = first + b"".join(chunks)
    return Resumed(response, raw, first_byte_at)


def _direct_text(simulator: StreamhopProcess, body: dict[str, Any]) -> str:
    raw = httpx2.post(simulator.url + CHAT, json=body, timeout=30).content
    return _text(sse_events(raw)[0])


def _drop_and_resume(
    first: StreamhopProcess, second: StreamhopProcess, max_tokens: int = 120
) -> tuple[str, Dropped, list[dict[str, str]], Resumed]:
    """Drop a slow stream on ``first`` after 3 events, resume it on ``second``."""
    rid = uuid.uuid4().hex
    body = chat_body(f"resume {rid}", max_tokens)
    dropped = _read_some(first.url + CHAT, body, {**SLOW_SIM, "x-request-id": rid}, 3)
    resumed = _resume_streamed(second.url + CHAT, body, dropped.events[-1]["id"])
    after, rest = sse_events(resumed.raw)
    assert rest == b""
    seqs = _seqs(dropped.events + after, dropped.stream_id)
    assert seqs == list(range(1, len(dropped.events) + len(after) + 1))
    return rid, dropped, after, resumed


def test_detach_memory_resume_has_no_gap_and_generation_completes(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = _start(start_sidecar, simulator.url, "enabled = true", on_disconnect="detach")
    rid, dropped, after, resumed = _drop_and_resume(side, side)
    before = dropped.events
    assert resumed.response.status_code == 200
    assert resumed.response.headers["content-type"].startswith("text/event-stream")
    assert resumed.response.headers["x-streamhop-stream-id"] == before[0]["id"].split(":")[0]
    assert after[-1]["data"] == "[DONE]"
    assert _text(before + after) == _direct_text(simulator, chat_body(f"resume {rid}", 120))
    assert sim_record(simulator.url, rid)["outcome"] == "complete"
    # Resuming again from the start replays the whole finished log.
    again = _resume(side.url + CHAT, {}, before[0]["id"].split(":")[0] + ":0")
    assert sse_events(again.content)[0] == before + after


def test_cancel_memory_resume_returns_what_was_logged_then_ends(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = _start(start_sidecar, simulator.url, "enabled = true")
    rid = uuid.uuid4().hex
    body = chat_body(f"cancel {rid}", 200)
    dropped = _read_some(side.url + CHAT, body, {**SLOW_SIM, "x-request-id": rid}, 3)
    before = dropped.events
    assert sim_record(simulator.url, rid)["outcome"] == "client_closed"
    resumed = _resume(side.url + CHAT, body, before[-1]["id"])
    assert resumed.status_code == 200
    after, _ = sse_events(resumed.content)
    seqs = _seqs(before + after, dropped.stream_id)
    assert seqs == list(range(1, len(before) + len(after) + 1))
    error = orjson.loads(after[-1]["data"])["error"]
    assert error["code"] == "stream_cancelled"
    full = _direct_text(simulator, body)
    partial = _text(before + after[:-1])
    assert full.startswith(partial) and len(partial) < len(full)


def test_unknown_stream_is_404_and_malformed_id_is_400(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = _start(start_sidecar, simulator.url, "enabled = true")
    unknown = _resume(side.url + CHAT, chat_body("x", 5), "0123456789abcdef:3")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "stream_not_found"
    for bad in ("nocolon", "abc:x", "a b:1", ":4"):
        malformed = _resume(side.url + CHAT, chat_body("x", 5), bad)
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
    raw = httpx2.post(sidecar.url + "/sim" + CHAT, json=chat_body("ids", 10), timeout=30).content
    assert b"\nid: " not in raw and not raw.startswith(b"id: ")


def test_redis_resume_on_another_replica_while_generating(
    simulator: StreamhopProcess, redis_url: str, start_sidecar: StartSidecar
) -> None:
    resume = (
        'enabled = true\nstore = "redis"\nbinding_key = "k"\n'
        f'redis_url = "{redis_url}"\nwindow_s = 60'
    )
    a = _start(start_sidecar, simulator.url, resume, on_disconnect="detach")
    b = _start(start_sidecar, simulator.url, resume)
    # 300 tokens at 100 tokens/s: A generates for 3 s, far longer than the drop and the resume
    # take.
    rid, dropped, after, resumed = _drop_and_resume(a, b, max_tokens=300)
    record = sim_record(simulator.url, rid)
    assert record["outcome"] == "complete"
    assert resumed.response.status_code == 200
    assert after[-1]["data"] == "[DONE]"
    assert _text(dropped.events + after) == _direct_text(simulator, chat_body(f"resume {rid}", 300))
    # B followed the live tail: its answer had begun while A's generation still ran.
    assert resumed.first_byte_at < record["ended"]
    assert b.admin_url is not None
    assert metric(b.admin_url, "streamhop_resume_errors_total") == 0


def test_redis_down_streams_still_work_error_logged_once_and_counted(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    port = free_port()  # nothing listens there
    resume = (
        'enabled = true\nstore = "redis"\nbinding_key = "k"\n'
        f'redis_url = "redis://127.0.0.1:{port}/0"'
    )
    side = _start(start_sidecar, simulator.url, resume)
    assert side.admin_url is not None
    admin_url = side.admin_url
    for i in range(3):
        body = chat_body(f"down {i}", 20)
        raw = httpx2.post(side.url + CHAT, json=body, timeout=30).content
        events, _ = sse_events(raw)
        assert events[-1]["data"] == "[DONE]"
        assert _text(events) == _direct_text(simulator, body)
    wait_for(
        lambda: metric(admin_url, "streamhop_resume_errors_total", kind="write") >= 3,
        10,
        "the resume write errors to be counted",
    )
    resumed = _resume(side.url + CHAT, {}, "0123456789abcdef:1")
    assert resumed.status_code == 503
    assert resumed.json()["error"]["code"] == "resume_unavailable"
    # Once the process has exited, its stderr is complete: every line it would log is there.
    assert side.stop() == 0
    assert side.stderr.count("resume store redis failed") == 1, side.stderr


def test_redis_log_over_its_byte_cap_is_closed_stream_goes_on(
    simulator: StreamhopProcess, redis_url: str, start_sidecar: StartSidecar
) -> None:
    resume = (
        'enabled = true\nstore = "redis"\nbinding_key = "k"\n'
        f'redis_url = "{redis_url}"\nmax_stream_bytes = 1024'
    )
    side = _start(start_sidecar, simulator.url, resume)
    assert side.admin_url is not None
    body = chat_body("a long answer", 300)
    response = httpx2.post(side.url + CHAT, json=body, timeout=30)
    events, _ = sse_events(response.content)
    assert events[-1]["data"] == "[DONE]"
    assert _text(events) == _direct_text(simulator, body)
    stream_id = response.headers["x-streamhop-stream-id"]
    resumed = _resume(side.url + CHAT, body, f"{stream_id}:1")
    assert resumed.status_code == 410
    assert resumed.json()["error"]["code"] == "resume_log_full"
    admin_url = side.admin_url
    name = "streamhop_resume_errors_total"
    wait_for(lambda: metric(admin_url, name, kind="log_full") >= 1, 10, "log_full to be counted")
    assert metric(admin_url, name, kind="log_full") == 1


WINDOW_S = 1.0


def test_detached_generation_is_cancelled_after_window(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = _start(start_sidecar, simulator.url, f"enabled = true\nwindow_s = {WINDOW_S}", "detach")
    rid = uuid.uuid4().hex
    body = chat_body(f"window {rid}", 400)  # 80 content events, about 4 s at 100 tokens/s
    dropped = _read_some(side.url + CHAT, body, {**SLOW_SIM, "x-request-id": rid}, 3)
    record = sim_record(simulator.url, rid)
    # Cancelled, not run to its end ...
    assert record["outcome"] == "client_closed"
    assert record["events"] < 80
    # ... and not at the drop either: the generation ran on, detached, for the window, which
    # starts when the sidecar sees the client leave (after closing_at). A lower bound only: a
    # slow machine makes it later, never earlier.
    assert record["ended"] - dropped.closing_at > WINDOW_S - 0.1
    resumed = _resume(side.url + CHAT, body, dropped.events[-1]["id"])
    after, _ = sse_events(resumed.content)
    assert orjson.loads(after[-1]["data"])["error"]["code"] == "stream_cancelled"
    seqs = _seqs(dropped.events + after, dropped.stream_id)
    assert seqs == list(range(1, len(dropped.events) + len(after) + 1))


def test_shutdown_ends_a_resumed_stream_with_an_error_event(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = _start(start_sidecar, simulator.url, "enabled = true", on_disconnect="detach")
    body = chat_body("shutdown", 1000)  # about 10 s at 100 tokens/s
    dropped = _read_some(side.url + CHAT, body, SLOW_SIM, 3)
    with (
        httpx2.Client(timeout=30) as http,
        http.stream(
            "POST", side.url + CHAT, json=body, headers={"last-event-id": dropped.events[-1]["id"]}
        ) as resumed,
    ):
        assert resumed.status_code == 200
        side.proc.send_signal(signal.SIGTERM)  # drain_timeout_s = 2, then open streams stop
        raw = b"".join(resumed.iter_raw())
    after, rest = sse_events(raw)
    assert rest == b""
    assert orjson.loads(after[-1]["data"])["error"]["code"] == "shutdown"
    assert side.proc.wait(15) == 0
