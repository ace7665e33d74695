"""``on_disconnect = "grace"``: a generation outlives its client for ``disconnect_grace_ms``; a
resume meanwhile (on this replica or another sharing Redis) lets it finish, else it is cancelled
(``grace_expired``) and its log ends with a terminal event. Real sidecars, the real simulator,
a real ``redis-server``; and :meth:`EdgeContext.grace` on its own."""

from __future__ import annotations

import asyncio
import uuid

import httpx2
import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamhop.middleware.errors import ConfigError
from streamhop.middleware.observe.metrics import Metrics
from streamhop.sidecar.config import config_from_dict
from streamhop.sidecar.upstream.edge import EdgeContext
from streamhop.sidecar.upstream.pool import UpstreamPool
from streamhop.sidecar.upstream.registry import SidecarState
from tests.sidecar.resume.test_resume import (
    _direct_text,
    _read_some,
    _resume_streamed,
    _seqs,
    _text,
    redis_url,  # noqa: F401  (the fixture)
)
from tests.support import (
    CHAT,
    SLOW_SIM,
    StartSidecar,
    StreamhopProcess,
    chat_body,
    metric,
    sim_record,
    sse_events,
)

GRACE_MS = 600


def _grace(start_sidecar: StartSidecar, upstream: str, resume: str, grace_ms: int = GRACE_MS) -> (
    StreamhopProcess
):
    return start_sidecar(
        upstream,
        server="drain_timeout_s = 2",
        sections=f"[resume]\n{resume}",
        route=f'on_disconnect = "grace"\ndisconnect_grace_ms = {grace_ms}',
    )


def test_without_a_resume_the_generation_is_cancelled_after_the_grace(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = _grace(start_sidecar, simulator.url, "enabled = true\nwindow_s = 60")
    rid = uuid.uuid4().hex
    body = chat_body(f"grace {rid}", 400)  # 80 content events, about 4 s at 100 tokens/s
    dropped = _read_some(side.url + CHAT, body, {**SLOW_SIM, "x-request-id": rid}, 3)
    record = sim_record(simulator.url, rid)
    assert record["outcome"] == "client_closed"  # cancelled, not run to its end ...
    assert record["events"] < 80
    # ... and not at the drop: the generation ran on for the grace, which starts when the
    # sidecar sees the client leave (after closing_at). A lower bound only.
    assert record["ended"] - dropped.closing_at > GRACE_MS / 1000 - 0.1
    assert side.admin_url is not None
    assert metric(side.admin_url, "streamhop_cancellations_total", reason="grace_expired") == 1
    # The log ends with a terminal event: a late resume replays what was generated, then ends.
    late = _resume_streamed(side.url + CHAT, body, dropped.events[-1]["id"])
    after, rest = sse_events(late.raw)
    assert rest == b""
    assert orjson.loads(after[-1]["data"])["error"]["code"] == "stream_cancelled"
    seqs = _seqs(dropped.events + after, dropped.stream_id)
    assert seqs == list(range(1, len(dropped.events) + len(after) + 1))


def test_a_resume_within_the_grace_lets_the_generation_finish(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = _grace(start_sidecar, simulator.url, "enabled = true\nwindow_s = 60", grace_ms=3000)
    rid = uuid.uuid4().hex
    body = chat_body(f"grace {rid}", 400)
    dropped = _read_some(side.url + CHAT, body, {**SLOW_SIM, "x-request-id": rid}, 3)
    resumed = _resume_streamed(side.url + CHAT, body, dropped.events[-1]["id"])
    after, rest = sse_events(resumed.raw)
    assert rest == b"" and after[-1]["data"] == "[DONE]"
    assert _text(dropped.events + after) == _direct_text(simulator, body)
    assert sim_record(simulator.url, rid)["outcome"] == "complete"
    assert side.admin_url is not None
    assert metric(side.admin_url, "streamhop_cancellations_total", reason="grace_expired") == 0


def test_a_resume_on_another_replica_keeps_the_generation_going(
    simulator: StreamhopProcess, redis_url: str, start_sidecar: StartSidecar  # noqa: F811
) -> None:
    resume = (
        'enabled = true\nstore = "redis"\nbinding_key = "k"\n'
        f'redis_url = "{redis_url}"\nwindow_s = 60'
    )
    # A's grace (1.5 s) is far shorter than the generation (400 tokens at 100 tokens/s, 4 s):
    # the stream completes only if B's resume reached A through Redis.
    a = _grace(start_sidecar, simulator.url, resume, grace_ms=1500)
    b = _grace(start_sidecar, simulator.url, resume, grace_ms=1500)
    rid = uuid.uuid4().hex
    body = chat_body(f"grace {rid}", 400)
    dropped = _read_some(a.url + CHAT, body, {**SLOW_SIM, "x-request-id": rid}, 3)
    resumed = _resume_streamed(b.url + CHAT, body, dropped.events[-1]["id"])
    after, rest = sse_events(resumed.raw)
    assert rest == b"" and after[-1]["data"] == "[DONE]"
    record = sim_record(simulator.url, rid)
    assert record["outcome"] == "complete"
    assert record["ended"] - dropped.closing_at > 1.5  # it ran past A's grace
    assert _text(dropped.events + after) == _direct_text(simulator, body)
    assert a.admin_url is not None
    assert metric(a.admin_url, "streamhop_cancellations_total", reason="grace_expired") == 0
    assert metric(a.admin_url, "streamhop_resume_errors_total") == 0


def test_a_request_may_choose_grace_where_the_route_allows_it(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = start_sidecar(
        simulator.url,
        sections="[resume]\nenabled = true",
        route="client_on_disconnect = true\ndisconnect_grace_ms = 300",
    )
    rid = uuid.uuid4().hex
    body = chat_body(f"grace {rid}", 400)
    headers = {**SLOW_SIM, "x-request-id": rid, "x-streamhop-on-disconnect": "grace"}
    dropped = _read_some(side.url + CHAT, body, headers, 3)
    record = sim_record(simulator.url, rid)
    assert record["outcome"] == "client_closed"
    assert record["ended"] - dropped.closing_at > 0.2
    assert side.admin_url is not None
    assert metric(side.admin_url, "streamhop_cancellations_total", reason="grace_expired") == 1
    # Without [resume] the header is refused, naming why.
    plain = start_sidecar(simulator.url, route="client_on_disconnect = true")
    refused = httpx2.post(
        plain.url + CHAT,
        json=chat_body("x", 5),
        headers={"x-streamhop-on-disconnect": "grace"},
        timeout=10,
    )
    assert refused.status_code == 400
    assert "[resume] is off" in refused.json()["error"]["message"]


def test_grace_needs_resume_and_a_positive_grace() -> None:
    route = {"prefix": "/", "upstream": "http://127.0.0.1:1", "on_disconnect": "grace"}
    with pytest.raises(ConfigError) as needs_resume:
        config_from_dict({"routes": [route]})
    assert needs_resume.value.key == "routes[0].on_disconnect"
    assert "[resume] enabled = true" in str(needs_resume.value)
    with pytest.raises(ConfigError) as zero:
        config_from_dict(
            {"resume": {"enabled": True}, "routes": [{**route, "disconnect_grace_ms": 0}]}
        )
    assert zero.value.key == "routes[0].disconnect_grace_ms"
    config = config_from_dict({"resume": {"enabled": True}, "routes": [route]})
    assert config.routes[0].disconnect_grace_ms == 10_000


def _edge() -> EdgeContext:
    config = config_from_dict({"routes": [{"prefix": "/", "upstream": "http://127.0.0.1:1"}]})
    metrics = Metrics(CollectorRegistry())
    return EdgeContext.build(config, UpstreamPool(), SidecarState(), metrics)


async def test_grace_ends_at_a_resume_at_the_work_s_end_or_at_its_timeout() -> None:
    edge = _edge()
    loop = asyncio.get_running_loop()
    work: asyncio.Future[None] = loop.create_future()
    # A resume during the wait.
    waiting = asyncio.ensure_future(edge.grace("k1", work, 60.0))
    while "k1" not in edge.graced:
        await asyncio.sleep(0)
    edge.resuming("k1")
    assert await waiting is True
    assert "k1" not in edge.graced
    # A resume that came before the disconnect was noticed.
    edge.resumed_elsewhere("k2")
    assert await edge.grace("k2", work, 60.0) is True
    # No resume: the grace runs out.
    assert await edge.grace("k3", work, 0.01) is False
    # The generation ended by itself first.
    work.set_result(None)
    assert await edge.grace("k4", work, 60.0) is False
    assert edge.graced == {}
