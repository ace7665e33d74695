"""The memory store's total byte budget (``[resume] max_total_bytes``): engine-level on the store
itself, then the config key and the metrics the app wires to it."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamhop.middleware.errors import ConfigError
from streamhop.middleware.observe.metrics import Metrics
from streamhop.middleware.sse.encoder import encode_event
from streamhop.middleware.sse.events import SSEEvent
from streamhop.sidecar.app import build_proxy_app
from streamhop.sidecar.config import ResumeConfig, config_from_dict
from streamhop.sidecar.resume import StreamNotFoundError, build_store
from streamhop.sidecar.resume.memory import MemoryStore
from streamhop.sidecar.upstream.registry import SidecarState

KIB = 1024


def _size(stamped: list[SSEEvent]) -> int:
    """Encoded bytes of ``stamped`` events, as the store keeps them."""
    return sum(len(encode_event(e).encode()) for e in stamped)


def _one(n: int) -> list[SSEEvent]:
    return [SSEEvent(data="x" * n)]


async def test_over_the_budget_finished_logs_go_first_then_the_oldest_running() -> None:
    """Past max_total_bytes the oldest finished log is dropped even when a running one is older;
    with no finished log left the oldest running one goes: its resumes then get what a resume of
    an expired log gets, while its writer (the live client) keeps numbering as before."""
    evictions: list[str] = []
    store = MemoryStore(
        window_s=60,
        max_streams=100,
        max_stream_bytes=4 * KIB,
        max_total_bytes=1000,
        on_evict=evictions.append,
    )
    oldest = store.open_writer("r1", [], "r1")
    held = _size(oldest.stamp(_one(280)))
    finished = store.open_writer("f1", [], "f1")
    held += _size(finished.stamp(_one(280)))
    finished.close()
    newest = store.open_writer("r2", [], "r2")
    held += _size(newest.stamp(_one(280)))
    assert held <= 1000
    assert store.bytes_held == held
    assert evictions == []

    follower = (await store.open_reader("r1", "r1")).events_after(0)
    async with asyncio.timeout(5):
        assert len(await anext(follower)) == 1
    waiting = asyncio.ensure_future(anext(follower))
    await asyncio.sleep(0)  # one loop turn, no delay: the follower now waits on the live tail

    newest.stamp(_one(280))  # over the budget: the finished log goes, not the older running one
    assert evictions == ["max_total_bytes"]
    assert store.bytes_held <= 1000
    with pytest.raises(StreamNotFoundError):
        await store.open_reader("f1", "f1")
    await store.open_reader("r1", "r1")
    assert not waiting.done()

    newest.stamp(_one(280))  # over again, no finished log left: the oldest running one goes
    assert evictions == ["max_total_bytes", "max_total_bytes"]
    assert store.bytes_held <= 1000
    with pytest.raises(StreamNotFoundError):
        await store.open_reader("r1", "r1")
    async with asyncio.timeout(5):
        with pytest.raises(StreamNotFoundError):
            await waiting

    before = store.bytes_held
    stamped = oldest.stamp(_one(280))  # the live client is unaffected; nothing more is kept
    assert [e.id for e in stamped] == ["r1:2"]
    assert store.bytes_held == before
    oldest.close()
    newest.close()
    async with asyncio.timeout(5):
        batches = [b async for b in (await store.open_reader("r2", "r2")).events_after(0)]
    assert sum(len(b) for b in batches) == 3
    await store.aclose()


async def test_bytes_held_follow_overflow_and_max_streams_drops() -> None:
    """A log closed at max_stream_bytes or dropped at max_streams gives its bytes back to the
    budget; a drop at max_streams counts as an eviction too."""
    evictions: list[str] = []
    store = MemoryStore(
        window_s=60,
        max_streams=2,
        max_stream_bytes=KIB,
        max_total_bytes=64 * KIB,
        on_evict=evictions.append,
    )
    big = store.open_writer("big", [], "big")
    big.stamp(_one(600))
    assert store.bytes_held > 0
    big.stamp(_one(600))  # past max_stream_bytes: closed and freed
    assert store.bytes_held == 0
    small = store.open_writer("small", [], "small")
    held = _size(small.stamp(_one(100)))
    small.close()
    assert store.bytes_held == held
    store.open_writer("third", [], "third")  # max_streams: the finished "small" goes
    assert store.bytes_held == 0
    assert evictions == ["max_streams"]
    await store.aclose()


@pytest.mark.parametrize("value", [0, -1])
def test_a_non_positive_budget_is_refused_naming_the_key(value: int) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"resume": {"max_total_bytes": value}})
    assert info.value.key == "resume.max_total_bytes"


def test_the_budget_defaults_to_128_mib_and_reaches_the_store() -> None:
    assert config_from_dict({}).resume.max_total_bytes == 128 * KIB * KIB
    config = config_from_dict({"resume": {"max_total_bytes": 5 * KIB * KIB}}).resume
    store = build_store(config, lambda kind: None)
    assert isinstance(store, MemoryStore)
    assert store.max_total_bytes == 5 * KIB * KIB
    assert ResumeConfig().max_total_bytes == 128 * KIB * KIB


async def test_evictions_and_bytes_held_are_metrics_from_zero() -> None:
    """With the memory store the eviction series exist at 0 from startup, and the bytes gauge
    reads the store."""
    registry = CollectorRegistry()
    config = config_from_dict(
        {
            "resume": {"enabled": True, "max_total_bytes": 2 * KIB},
            "routes": [{"prefix": "/", "upstream": "http://127.0.0.1:9"}],
        }
    )
    app = build_proxy_app(config, SidecarState(), Metrics(registry))
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()

    async def send(message: MutableMapping[str, Any]) -> None:
        await outbox.put(message)

    lifespan = asyncio.ensure_future(app({"type": "lifespan"}, inbox.get, send))
    async with asyncio.timeout(5):
        await inbox.put({"type": "lifespan.startup"})
        assert (await outbox.get())["type"] == "lifespan.startup.complete"
        for reason in ("max_total_bytes", "max_streams"):
            sample = registry.get_sample_value(
                "streamhop_resume_evictions_total", {"reason": reason}
            )
            assert sample == 0
        store = app.proxy.resume
        assert isinstance(store, MemoryStore)
        writer = store.open_writer("s", [], "s")
        held = _size(writer.stamp(_one(100)))
        assert registry.get_sample_value("streamhop_resume_memory_bytes") == held
        writer.stamp(_one(1500))
        writer.stamp(_one(1500))
        evicted = registry.get_sample_value(
            "streamhop_resume_evictions_total", {"reason": "max_total_bytes"}
        )
        assert evicted == 1
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await lifespan
