"""Rolling restarts that keep streams: SIGTERM one of two replicas sharing a real
``redis-server``; a client that reconnects as EventSource does follows the stream to its end
on the other replica, through a balancer that, like a Kubernetes Service, sends new
connections only to ready replicas."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from typing import Any

import httpx2
import orjson

from tests.cluster import ReadyBalancer
from tests.support import (
    StartSidecar,
    StreamhopProcess,
    chat_body,
    chat_text,
    sim_record,
    sse_events,
)

CHAT = "/v1/chat/completions"
SLOW_SIM = {"x-sim-events-per-second": "20", "x-sim-tokens-per-second": "100"}


def _reconnecting_client(
    url: str, body: dict[str, Any], headers: dict[str, str], on_events: Any
) -> tuple[list[dict[str, str]], int]:
    """Read a stream as EventSource does: on a clean close without the end, wait ``retry`` ms
    (the protocol's reconnection delay) and reconnect with ``Last-Event-ID``. Returns every
    event and the number of connections."""
    events: list[dict[str, str]] = []
    retry_ms = 3000
    last_id: str | None = None
    connections = 0
    while connections < 5:
        connections += 1
        request_headers = {"accept": "text/event-stream", **headers}
        if last_id is not None:
            request_headers["last-event-id"] = last_id
        with (
            httpx2.Client(timeout=30) as http,
            http.stream("POST", url, json=body, headers=request_headers) as response,
        ):
            assert response.status_code == 200, response.read()
            raw = b""
            for chunk in response.iter_raw():
                raw += chunk
                complete, raw = sse_events(raw)
                for event in complete:
                    if "retry" in event:
                        retry_ms = int(event["retry"])
                    if "data" in event:
                        events.append(event)
                        last_id = event.get("id", last_id)
                        on_events(len(events))
        if events and events[-1]["data"] == "[DONE]":
            return events, connections
        time.sleep(retry_ms / 1000)  # EventSource's reconnection time, as the server set it
    raise AssertionError(f"no end after {connections} connections: {events[-3:]}")


def test_sigterm_hands_reconnecting_clients_to_another_replica(
    simulator: StreamhopProcess, start_sidecar: StartSidecar, shared_redis: str
) -> None:
    resume = (
        f'[resume]\nenabled = true\nstore = "redis"\nredis_url = "{shared_redis}"\n'
        'binding_key = "shared-by-replicas"\nhandoff_jitter_ms = 200\nwindow_s = 60'
    )
    a = start_sidecar(simulator.url, server="drain_timeout_s = 30", sections=resume)
    b = start_sidecar(simulator.url, server="drain_timeout_s = 30", sections=resume)
    rid = uuid.uuid4().hex
    body = chat_body(f"handoff {rid}", 200)
    terminated = threading.Event()

    def on_events(count: int) -> None:
        if count == 5 and not terminated.is_set():  # mid-stream: roll replica A
            terminated.set()
            a.proc.send_signal(signal.SIGTERM)

    with ReadyBalancer([a, b]) as balancer:
        events, connections = _reconnecting_client(
            balancer.url + CHAT, body, {**SLOW_SIM, "x-request-id": rid}, on_events
        )
        routed = list(balancer.routed)
    assert terminated.is_set()
    assert connections == 2 and routed == [0, 1]
    # No event lost or repeated: one stream id, sequence numbers 1..n without a gap.
    stream_ids = {e["id"].partition(":")[0] for e in events}
    assert len(stream_ids) == 1
    assert [int(e["id"].partition(":")[2]) for e in events] == list(range(1, len(events) + 1))
    # The complete message, from one generation.
    direct = httpx2.post(simulator.url + CHAT, json=body, timeout=60).content
    direct_text = chat_text(orjson.loads(e["data"]) for e in sse_events(direct)[0][:-1])
    got = chat_text(orjson.loads(e["data"]) for e in events[:-1])
    assert got == direct_text
    assert sim_record(simulator.url, rid)["outcome"] == "complete"
    records = httpx2.get(simulator.url + "/_simulator/streams", timeout=10).json()
    assert sum(1 for r in records if r["id"] == rid) == 1
    assert a.proc.wait(60) == 0  # A drained: its generation ended, then it exited


def test_clients_that_cannot_reconnect_are_drained_not_handed_off(
    simulator: StreamhopProcess, start_sidecar: StartSidecar, shared_redis: str
) -> None:
    """An SDK reads a clean close as the end of the answer: without Accept: text/event-stream
    the stream is not handed off; it runs to its end on the draining replica."""
    resume = (
        f'[resume]\nenabled = true\nstore = "redis"\nredis_url = "{shared_redis}"\n'
        'binding_key = "k"\nhandoff_jitter_ms = 0'
    )
    a = start_sidecar(simulator.url, server="drain_timeout_s = 30", sections=resume)
    body = chat_body("no handoff", 60)
    with (
        httpx2.Client(timeout=60) as http,
        http.stream("POST", a.url + CHAT, json=body, headers=SLOW_SIM) as response,
    ):
        raw = b""
        for chunk in response.iter_raw():
            if not raw:
                a.proc.send_signal(signal.SIGTERM)
            raw += chunk
    events, rest = sse_events(raw)
    assert rest == b""
    assert events[-1]["data"] == "[DONE]"
    assert not any("retry" in e for e in events)
