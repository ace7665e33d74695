"""``streamhop simulate --replay X.sse --timing X.json``: the pair checked against each other,
delays taken from when the recorded request went upstream, and the replay written read by read
with the recorded status and ending."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamhop.sidecar.simulate.cli import add_arguments, run
from streamhop.sidecar.simulate.config import SimulatorConfig
from streamhop.sidecar.simulate.errors import SimulatorConfigError
from streamhop.sidecar.simulate.timing import load_timed_replay, timed_replay
from tests.sidecar.simulate.test_simulate import serving

SSE = b'data: {"a": 1}\n\ndata: {"a": 2}\n\ndata: [DONE]\n\n'


def _timeline(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1,
        "status": 200,
        "upstream_request_offset_ms": 1.0,
        "upstream_connected_offset_ms": 2.0,
        "upstream_headers_offset_ms": 12.0,
        "response_headers": [
            ["Content-Type", "text/event-stream; charset=utf-8"],
            ["Set-Cookie", "[redacted]"],
        ],
        "reads": [
            {"offset_ms": 12.5, "bytes": 16},
            {"offset_ms": 52.0, "bytes": 10},
            {"offset_ms": 52.0, "bytes": 6},
            {"offset_ms": 92.0, "bytes": 14},
        ],
        "cancel_reason": None,
        "error": None,
    }
    doc.update(over)
    return doc


def test_reads_are_cut_and_timed_from_the_upstream_request() -> None:
    replay = timed_replay(SSE, _timeline(), "t.json", "t.sse")
    assert replay.status == 200 and replay.ending == "eof"
    assert replay.headers == (("content-type", "text/event-stream; charset=utf-8"),)
    assert replay.headers_delay_s == pytest.approx(0.010)
    assert [chunk for _, chunk in replay.reads] == [
        b'data: {"a": 1}\n\n',
        b'data: {"a"',
        b": 2}\n\n",
        b"data: [DONE]\n\n",
    ]
    assert [d for d, _ in replay.reads] == pytest.approx([0.0105, 0.050, 0.050, 0.090])


def test_without_upstream_offsets_delays_count_from_the_arrival() -> None:
    doc = _timeline(
        upstream_connected_offset_ms=None,
        upstream_request_offset_ms=None,
        upstream_headers_offset_ms=None,
        response_headers=[["Content-Encoding", "gzip"]],
    )
    replay = timed_replay(SSE, doc, "t.json", "t.sse")
    assert replay.reads[0][0] == pytest.approx(0.0125) and replay.headers_delay_s == 0.0
    assert dict(replay.headers) == {"content-encoding": "gzip", "content-type": "text/event-stream"}


@pytest.mark.parametrize(
    ("over", "ending"),
    [
        ({"error": "disconnected"}, "abort"),
        ({"error": "truncated"}, "abort"),
        ({"error": "read_timeout"}, "hold"),
        ({"cancel_reason": "client_disconnect"}, "hold"),
        ({"error": "incomplete"}, "eof"),
    ],
)
def test_the_recorded_end_decides_the_replayed_end(over: dict[str, Any], ending: str) -> None:
    assert timed_replay(SSE, _timeline(**over), "t.json", "t.sse").ending == ending


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"version": 2}, "version 1, got version 2"),
        ({"status": "200"}, "status must be an HTTP status"),
        ({"reads": {}}, "reads must be a list"),
        ({"reads": [{"offset_ms": -1, "bytes": 46}]}, "reads[0] must be"),
        ({"reads": [{"offset_ms": 1, "bytes": True}]}, "reads[0] must be"),
        (
            {"reads": [{"offset_ms": 5, "bytes": 20}, {"offset_ms": 4, "bytes": 26}]},
            "reads[1].offset_ms=4.0 is before",
        ),
        ({"reads": [{"offset_ms": 5, "bytes": 45}]}, "add up to 45 bytes but t.sse holds 46"),
    ],
)
def test_a_mismatched_pair_names_the_file(over: dict[str, Any], reason: str) -> None:
    with pytest.raises(SimulatorConfigError) as info:
        timed_replay(SSE, _timeline(**over), "t.json", "t.sse")
    assert info.value.key == "timing"
    assert str(info.value).startswith("invalid timing: t.json: ")
    assert reason in str(info.value)


def test_timing_needs_a_replay() -> None:
    with pytest.raises(SimulatorConfigError) as info:
        SimulatorConfig(timing=Path("x.json"))
    assert info.value.key == "timing"


def _pair(tmp_path: Path, doc: dict[str, Any], sse: bytes = SSE) -> tuple[Path, Path]:
    sse_path, json_path = tmp_path / "r.sse", tmp_path / "r.json"
    sse_path.write_bytes(sse)
    json_path.write_bytes(json.dumps(doc).encode())
    return sse_path, json_path


def test_load_reads_the_pair(tmp_path: Path) -> None:
    sse_path, json_path = _pair(tmp_path, _timeline())
    assert len(load_timed_replay(sse_path, json_path).reads) == 4
    json_path.write_text("{not json")
    with pytest.raises(SimulatorConfigError, match="is not JSON"):
        load_timed_replay(sse_path, json_path)
    with pytest.raises(SimulatorConfigError, match="cannot read"):
        load_timed_replay(tmp_path / "gone.sse", json_path)


def test_cli_refuses_a_mismatched_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sse_path, json_path = _pair(tmp_path, _timeline(), SSE + b"data: extra\n\n")
    parser = argparse.ArgumentParser(prog="streamhop simulate")
    add_arguments(parser)
    for argv in (
        ["--replay", str(sse_path), "--timing", str(json_path)],
        ["--timing", str(json_path)],
    ):
        with pytest.raises(SystemExit) as info:
            run(parser.parse_args(argv))
        assert info.value.code == 2
        assert "argument --timing:" in capsys.readouterr().err


async def test_the_replay_is_written_read_by_read_on_time(tmp_path: Path) -> None:
    sse_path, json_path = _pair(tmp_path, _timeline(status=429))
    async with (
        serving(SimulatorConfig(replay=sse_path, timing=json_path)) as url,
        aiohttp.ClientSession() as session,
    ):
        sent = time.monotonic()
        async with session.post(url + "/v1/chat/completions", json={}) as resp:
            assert resp.status == 429
            assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            assert "Set-Cookie" not in resp.headers
            chunks: list[tuple[float, bytes]] = []
            pending = b""
            async for data, end_of_chunk in resp.content.iter_chunks():
                pending += data
                if end_of_chunk:
                    chunks.append((time.monotonic() - sent, pending))
                    pending = b""
    assert b"".join(c for _, c in chunks) == SSE
    # Each read is its own HTTP chunk, never early (two reads due together may merge).
    assert chunks[0][1] == b'data: {"a": 1}\n\n'
    assert chunks[0][0] >= 0.0105 and chunks[-1][0] >= 0.090
    assert chunks[-1][1] == b"data: [DONE]\n\n"


async def test_a_cut_recording_is_cut_again(tmp_path: Path) -> None:
    sse_path, json_path = _pair(tmp_path, _timeline(error="disconnected"))
    async with (
        serving(SimulatorConfig(replay=sse_path, timing=json_path)) as url,
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/chat/completions", json={}) as resp,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 5)
