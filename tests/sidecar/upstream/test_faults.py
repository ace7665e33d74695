"""Provider faults, each injected by a real upstream on loopback, seen through the real sidecar:
the client always gets a well-formed end (an error in its provider's format), the upstream
connection is closed when streamhop gives up on it, and the fault is counted."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx2
import openai
import pytest

from tests.sidecar.upstreams import wait_closed
from tests.support import StreamhopProcess, chat_text, delta, sse_data, wait_for, wait_idle

ROUTE = "/"
"""The session sidecar's route to the scripted upstream, where the faults are."""
STREAM_BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}


def _post_stream(
    url: str, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, list[Any], httpx2.Headers]:
    """POST a streaming request; return status, each event's data (JSON-decoded when it
    parses), and the response headers. The read must end by itself: a hang fails the test."""
    with httpx2.Client(timeout=timeout) as http:
        response = http.post(url, json=STREAM_BODY, headers=headers or {})
    return response.status_code, sse_data(response.content), response.headers


def test_drop_mid_stream_ends_with_error_event(sidecar: StreamhopProcess) -> None:
    assert sidecar.admin_url is not None
    before = wait_idle(sidecar.admin_url, ROUTE)
    status, events, _ = _post_stream(sidecar.url + "/fault/drop")
    assert status == 200
    assert chat_text(events) == "one two "
    last = events[-1]
    assert isinstance(last, dict) and last["error"]["code"] == "upstream_disconnected"
    after = wait_idle(sidecar.admin_url, ROUTE)
    assert delta(before, after, "streamhop_upstream_errors_total", kind="disconnected") == 1


def test_drop_mid_stream_raises_in_the_openai_sdk(sidecar: StreamhopProcess) -> None:
    with openai.OpenAI(base_url=sidecar.url + "/fault/drop", api_key="x", max_retries=0) as client:
        stream = client.chat.completions.create(model="m", messages=[], stream=True)
        with pytest.raises(openai.APIError, match="mid-stream"):
            for _ in stream:
                pass


def test_no_headers_in_time_is_504_and_upstream_closed(sidecar: StreamhopProcess) -> None:
    rid = uuid.uuid4().hex
    start = time.monotonic()
    with httpx2.Client(timeout=30) as http:
        response = http.post(
            sidecar.url + "/slow/fault/hang-headers",
            json=STREAM_BODY,
            headers={"x-request-id": rid},
        )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_headers_timeout"
    assert time.monotonic() - start < 10  # connect_timeout_s = 1 on /slow
    wait_closed(rid)


def test_deadline_mid_stream_ends_with_error_event_and_closes_upstream(
    sidecar: StreamhopProcess,
) -> None:
    assert sidecar.admin_url is not None
    before = wait_idle(sidecar.admin_url, ROUTE)
    rid = uuid.uuid4().hex
    start = time.monotonic()
    status, events, _ = _post_stream(
        sidecar.url + "/fault/hang-body",
        headers={"x-request-id": rid, "X-Streamhop-Timeout-Ms": "500"},
    )
    elapsed = time.monotonic() - start
    assert status == 200
    assert chat_text(events) == "before the hang"
    last = events[-1]
    assert isinstance(last, dict) and last["error"]["code"] == "timeout"
    # Not before the 500 ms deadline; that it was the deadline (not the provider's 30 s hang)
    # that ended the stream is the error code above.
    assert elapsed > 0.4
    wait_closed(rid)
    after = wait_idle(sidecar.admin_url, ROUTE)
    assert delta(before, after, "streamhop_cancellations_total", reason="timeout") == 1


def test_malformed_event_passes_verbatim_and_is_counted(sidecar: StreamhopProcess) -> None:
    assert sidecar.admin_url is not None
    before = wait_idle(sidecar.admin_url, ROUTE)
    status, events, _ = _post_stream(sidecar.url + "/fault/malformed")
    assert status == 200
    assert "{not json at all" in events
    assert chat_text(events) == "good after"
    assert events[-1] == "[DONE]"
    after = wait_idle(sidecar.admin_url, ROUTE)
    assert delta(before, after, "streamhop_upstream_errors_total", kind="malformed_event") == 1


def test_oversized_event_ends_stream_and_closes_upstream(sidecar: StreamhopProcess) -> None:
    rid = uuid.uuid4().hex
    status, events, _ = _post_stream(sidecar.url + "/fault/huge", headers={"x-request-id": rid})
    assert status == 200
    assert chat_text(events) == "small "
    last = events[-1]
    assert isinstance(last, dict) and last["error"]["code"] == "event_too_large"
    assert "max_event_bytes=1048576" in last["error"]["message"]
    wait_closed(rid)


def test_stream_ending_mid_event_gets_error_event(sidecar: StreamhopProcess) -> None:
    status, events, _ = _post_stream(sidecar.url + "/fault/truncated")
    assert status == 200
    assert chat_text(events) == "whole "
    last = events[-1]
    assert isinstance(last, dict) and last["error"]["code"] == "upstream_truncated"


def test_provider_error_status_and_body_pass_through(sidecar: StreamhopProcess) -> None:
    with httpx2.Client(timeout=10) as http:
        response = http.post(sidecar.url + "/fault/status", json=STREAM_BODY)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json() == {
        "error": {"message": "slow down", "type": "rate_limit", "code": "rate_limit"}
    }


def test_connect_refused_is_502_after_retry(sidecar: StreamhopProcess) -> None:
    assert sidecar.admin_url is not None
    before = wait_idle(sidecar.admin_url, "/down")
    # Other tests use /down on this sidecar too: count this request's log line, not any.
    logged = sidecar.stderr.count("retry 1/1")
    with httpx2.Client(timeout=20) as http:
        response = http.post(sidecar.url + "/down/v1/chat/completions", json=STREAM_BODY)
    assert response.status_code == 502
    assert "cannot connect" in response.json()["error"]["message"]
    # The default of one retry was made, and logged.
    wait_for(lambda: sidecar.stderr.count("retry 1/1") > logged, 10, "the retry's log line")
    after = wait_idle(sidecar.admin_url, "/down")
    assert delta(before, after, "streamhop_upstream_errors_total", kind="connect") == 1
