"""The first answer after reasoning, direct and through ``streamhop serve``, side by side.

A real upstream (aiohttp, loopback) replays a recorded reasoning stream from ``tests/fixtures``
at a fast provider's pace (one event every ``--pace-ms``, default 5); a real ``streamhop serve``
(default config: coalesce, 20 ms window) proxies it. The client reads raw SSE lines and notes
when the first answer text arrives (chat: a non-empty ``delta.content``; Responses:
``response.output_text.delta``; Anthropic: ``text_delta``), measured from sending the request.
Direct and proxied requests alternate, so both see the same machine.

Prints, per format: the median time to first answer direct and proxied, their difference, and the
p90 difference. The issue's target: the proxied median within 5 ms of direct.

Run: ``python -m bench.first_answer [--runs 20] [--pace-ms 5]``. Processes it starts are stopped
by their PID; every socket is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.processes import start_sidecar

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
CASES = {
    "openai-chat": ("deepseek_chat_reasoning_content", "/v1/chat/completions"),
    "openai-chat (gpt-oss)": ("groq_chat_gpt_oss_reasoning", "/v1/chat/completions"),
    "openai-responses": ("openai_responses_reasoning_summary", "/v1/responses"),
    "anthropic": ("anthropic_thinking_text", "/v1/messages"),
}


def is_answer(line: bytes) -> bool:
    """True when an SSE ``data:`` line carries answer text (not reasoning, not a tool call)."""
    if not line.startswith(b"data:"):
        return False
    try:
        obj = json.loads(line[5:])
    except ValueError:
        return False
    if not isinstance(obj, dict):
        return False
    for choice in obj.get("choices") or []:
        content = (choice.get("delta") or {}).get("content")
        if isinstance(content, str) and content:
            return True
    if obj.get("type") == "response.output_text.delta" and obj.get("delta"):
        return True
    delta = obj.get("delta")
    return isinstance(delta, dict) and delta.get("type") == "text_delta" and bool(delta.get("text"))


def blocks(name: str) -> list[bytes]:
    raw = (FIXTURES / f"{name}.sse").read_bytes()
    return [b + b"\n\n" for b in raw.split(b"\n\n")[:-1]]


def upstream_app(pace_s: float) -> web.Application:
    async def replay(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        start = time.monotonic()
        for i, block in enumerate(blocks(request.match_info["name"])):
            delay = start + i * pace_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the provider's pace, not a wait in a test
            await resp.write(block)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/fx/{name}/{rest:.*}", replay)
    return app


async def first_answer(session: aiohttp.ClientSession, url: str) -> float:
    """Seconds from sending the request to the first answer line; reads the body to its end."""
    sent = time.monotonic()
    found: float | None = None
    async with session.post(url, json={"model": "m", "stream": True}) as resp:
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if found is None and any(is_answer(line) for line in lines):
                found = time.monotonic() - sent
    if found is None:
        raise RuntimeError(f"no answer text from {url}")
    return found


async def main_async(runs: int, pace_s: float) -> None:
    runner = web.AppRunner(upstream_app(pace_s), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    upstream = f"http://127.0.0.1:{port}"
    proc = await asyncio.to_thread(start_sidecar, upstream)  # the upstream keeps serving
    assert proc.url is not None
    sidecar = proc.url
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            print(f"{runs} runs each, one event every {pace_s * 1000:g} ms, default config\n")
            print("| format | recording | direct p50 ms | proxied p50 ms | added p50 | added p90 |")
            print("| --- | --- | ---: | ---: | ---: | ---: |")
            for label, (name, path) in CASES.items():
                direct: list[float] = []
                proxied: list[float] = []
                for _ in range(runs):
                    direct.append(await first_answer(session, f"{upstream}/fx/{name}{path}"))
                    proxied.append(await first_answer(session, f"{sidecar}/fx/{name}{path}"))
                added = sorted(p - d for p, d in zip(proxied, direct, strict=True))
                p90 = added[min(len(added) - 1, int(0.9 * len(added)))]
                print(
                    f"| {label} | {name} | {statistics.median(direct) * 1000:.1f} "
                    f"| {statistics.median(proxied) * 1000:.1f} "
                    f"| {(statistics.median(proxied) - statistics.median(direct)) * 1000:+.1f} "
                    f"| {p90 * 1000:+.1f} |"
                )
    finally:
        await asyncio.to_thread(proc.stop)
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.first_answer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--pace-ms", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(main_async(args.runs, args.pace_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
