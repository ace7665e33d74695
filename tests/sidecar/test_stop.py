"""Stop is not disconnect: ``DELETE <prefix>/streamhop/v1/streams/<id>`` and
``X-Streamhop-On-Disconnect``, against a real sidecar in front of the real simulator."""

from __future__ import annotations

import uuid
from typing import Any

import httpx2

from tests.support import (
    CHAT,
    SLOW_SIM,
    StartSidecar,
    StreamhopProcess,
    chat_body,
    metric,
    sim_record,
    sse_events,
    wait_idle,
)

RESUME = "[resume]\nenabled = true\nwindow_s = 60"


def _start_and_drop(
    side: StreamhopProcess, rid: str, headers: dict[str, str], count: int = 3
) -> tuple[str, list[dict[str, str]]]:
    """Start a slow stream, read ``count`` events, drop the connection; return the stream id
    and the events read."""
    body = chat_body(f"stop {rid}", 400)
    with (
        httpx2.Client(timeout=30) as http,
        http.stream(
            "POST", side.url + CHAT, json=body, headers={**SLOW_SIM, "x-request-id": rid, **headers}
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        stream_id = response.headers["x-streamhop-stream-id"]
        raw = b""
        for chunk in response.iter_raw():
            raw += chunk
            events, _ = sse_events(raw)
            if len(events) >= count:
                return stream_id, events
    raise AssertionError("the stream ended before it could be dropped")


def _delete(side: StreamhopProcess, stream_id: str, **headers: str) -> httpx2.Response:
    return httpx2.delete(
        f"{side.url}/streamhop/v1/streams/{stream_id}", headers=headers, timeout=30
    )


def test_delete_stops_a_detached_generation_at_once(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = start_sidecar(simulator.url, sections=RESUME, route='on_disconnect = "detach"')
    assert side.admin_url is not None
    rid = uuid.uuid4().hex
    mine = {"authorization": "Bearer caller-a"}
    stream_id, before = _start_and_drop(side, rid, mine)
    # Other credentials, or an unknown id: the same 404 as for a stream that does not exist.
    assert _delete(side, stream_id, authorization="Bearer caller-b").status_code == 404
    assert _delete(side, stream_id).status_code == 404
    assert _delete(side, "0123456789abcdef", **mine).status_code == 404
    # The generation was still running, detached: the owner stops it; the answer comes once
    # the upstream is closed.
    stopped = _delete(side, stream_id, **mine)
    assert stopped.status_code == 204
    record = sim_record(simulator.url, rid)
    assert record["outcome"] == "client_closed"
    wait_idle(side.admin_url, "/")  # the stream's end is recorded
    assert metric(side.admin_url, "streamhop_cancellations_total", reason="stop") == 1
    assert _delete(side, stream_id, **mine).status_code == 404  # nothing runs any more
    # A follower resuming from the log gets the end: a terminal error event, then the close.
    resumed = httpx2.post(
        side.url + CHAT,
        json=chat_body("resume"),
        headers={**mine, "last-event-id": before[-1]["id"]},
        timeout=30,
    )
    assert resumed.status_code == 200
    events, rest = sse_events(resumed.content)
    assert rest == b""
    last: Any = events[-1]
    assert '"stream_cancelled"' in last["data"]


def test_on_disconnect_header_detaches_where_the_route_allows_it(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = start_sidecar(simulator.url, sections=RESUME, route="client_on_disconnect = true")
    rid = uuid.uuid4().hex
    stream_id, _ = _start_and_drop(side, rid, {"x-streamhop-on-disconnect": "detach"})
    # Detached, so still running after the drop: a DELETE finds it.
    assert _delete(side, stream_id).status_code == 204
    assert sim_record(simulator.url, rid)["outcome"] == "client_closed"


def test_on_disconnect_header_is_refused_where_the_route_forbids_it(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = start_sidecar(simulator.url, sections=RESUME)
    refused = httpx2.post(
        side.url + CHAT,
        json=chat_body("x", 5),
        headers={"x-streamhop-on-disconnect": "detach"},
        timeout=30,
    )
    assert refused.status_code == 400
    assert "client_on_disconnect" in refused.json()["error"]["message"]
    bad = httpx2.post(
        side.url + CHAT,
        json=chat_body("x", 5),
        headers={"x-streamhop-on-disconnect": "later"},
        timeout=30,
    )
    assert bad.status_code == 400


def test_delete_on_another_replica_stops_the_generation_through_the_shared_store(
    simulator: StreamhopProcess, start_sidecar: StartSidecar, shared_redis: str
) -> None:
    """Behind a Service the DELETE may land on another replica than the generation: it finds
    the running log in Redis, publishes the stop, and answers once the log ended."""
    resume = (
        f'[resume]\nenabled = true\nstore = "redis"\nredis_url = "{shared_redis}"\n'
        'binding_key = "shared"\nwindow_s = 60'
    )
    a = start_sidecar(simulator.url, sections=resume, route='on_disconnect = "detach"')
    b = start_sidecar(simulator.url, sections=resume)
    assert a.admin_url is not None
    rid = uuid.uuid4().hex
    mine = {"authorization": "Bearer caller-a"}
    stream_id, _ = _start_and_drop(a, rid, mine)
    assert _delete(b, stream_id, authorization="Bearer caller-b").status_code == 404
    assert _delete(b, stream_id, **mine).status_code == 204
    assert sim_record(simulator.url, rid)["outcome"] == "client_closed"
    wait_idle(a.admin_url, "/")
    assert metric(a.admin_url, "streamhop_cancellations_total", reason="stop") == 1
    assert _delete(b, stream_id, **mine).status_code == 404  # its log has ended
