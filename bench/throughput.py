"""Throughput and overhead of the sidecar under many concurrent fast streams.

Starts ``streamhop simulate`` (default 200 SSE events/s x 10 tokens/event, like Cerebras) and
``streamhop serve`` in front of it on loopback, then runs N concurrent streams (default 50) for a
fixed time, first directly against the simulator, then through the sidecar, with a light aiohttp
client. Prints:

* upstream events/s the sidecar handled (events the simulator sent through it);
* the sidecar process's CPU time (user + system, from /proc via psutil) per upstream event, in
  microseconds: the figure to compare with the 50 us/event target;
* the sidecar's peak RSS (VmHWM);
* TTFT (request sent -> first content byte) direct vs through streamhop, p50/p99, and the
  difference.

With ``--profile`` the sidecar runs under ``py-spy record`` and the hottest functions are printed.

Usage: python -m bench.throughput [--streams 50] [--seconds 10] [--events-per-second 200]
       [--tokens-per-event 10] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from bench.processes import start_sidecar, start_streamhop
from bench.procfs import peak_rss_mb

PROMPT = "Benchmark the plumbing, not the model."


@dataclass
class Phase:
    """Client-side results of one phase (direct or proxied)."""

    ttft_s: list[float] = field(default_factory=list)
    events: int = 0
    streams: int = 0
    bytes: int = 0
    errors: int = 0


async def one_stream(
    session: aiohttp.ClientSession, url: str, max_tokens: int, phase: Phase
) -> None:
    body = {
        "model": "sim",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    start_t = time.perf_counter()
    first = None
    events = 0
    size = 0
    try:
        async with session.post(url + "/v1/chat/completions", json=body) as response:
            buf = b""
            last = b""
            async for chunk in response.content.iter_any():
                size += len(chunk)
                # Each SSE event ends with a blank line; a "\n\n" may straddle two reads.
                events += chunk.count(b"\n\n") + (last == b"\n" and chunk[:1] == b"\n")
                last = chunk[-1:]
                if first is None:
                    buf += chunk
                    for line in buf.split(b"\n")[:-1]:  # complete lines only
                        if line.startswith(b"data: {"):
                            delta = orjson.loads(line[6:])["choices"][0]["delta"]
                            if delta.get("content"):
                                first = time.perf_counter() - start_t
                                break
        phase.streams += 1
        phase.events += events
        phase.bytes += size
        if first is not None:
            phase.ttft_s.append(first)
    except (TimeoutError, aiohttp.ClientError):
        phase.errors += 1


async def run_phase(url: str, streams: int, seconds: float, max_tokens: int) -> Phase:
    """Keep ``streams`` streams open for ``seconds``: each worker starts a new one when done."""
    phase = Phase()
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(i: int) -> None:
            # Stagger starts so streams do not tick in lockstep.
            await asyncio.sleep(i * 0.9 / streams)
            while time.monotonic() < deadline:
                await one_stream(session, url, max_tokens, phase)

        await asyncio.gather(*(worker(i) for i in range(streams)))
    return phase


def start_otlp_sink() -> str:
    """A local OTLP/HTTP endpoint that accepts and drops spans; returns its base URL."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def tracing_config(sink: str) -> Path:
    """A config file that only turns tracing on (routes come from --upstream)."""
    path = Path(tempfile.mkdtemp()) / "tracing.toml"
    path.write_text(f'[tracing]\notlp_endpoint = "{sink}"\n')
    return path


def _cpu(times: Any) -> float:
    return float(times.user + times.system)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--events-per-second", type=float, default=200.0)
    parser.add_argument("--tokens-per-event", type=float, default=10.0)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--max-tokens", type=int, default=2000, help="tokens per stream")
    parser.add_argument("--profile", action="store_true", help="run the sidecar under py-spy")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="turn on OpenTelemetry export (to a local OTLP sink) to measure its cost",
    )
    args = parser.parse_args()
    args.tracing_sink = start_otlp_sink() if args.tracing else ""

    tps = args.events_per_second * args.tokens_per_event
    sim = start_streamhop(
        [
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--ttft-ms",
            str(args.ttft_ms),
            "--events-per-second",
            str(args.events_per_second),
            "--tokens-per-second",
            str(tps),
            # One write per event: split writes exercise decoders in tests, here they would
            # only make the simulator the bottleneck.
            "--no-split-writes",
        ],
        name="simulator",
    )
    assert sim.url is not None
    sim_url = sim.url
    wrap: list[str] = []
    profile_out = Path(__file__).resolve().parent / "profile-sidecar.txt"
    if args.profile:
        py_spy = shutil.which("py-spy") or shutil.which(
            "py-spy", path=str(Path(sys.executable).parent)
        )
        if not py_spy:
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        wrap = [py_spy, "record", "--format", "raw", "-o", str(profile_out), "--rate", "200"]
        wrap.append("--")
    try:
        print(
            f"{args.streams} concurrent streams x {args.events_per_second:g} events/s x "
            f"{args.tokens_per_event:g} tokens/event, {args.seconds:g} s per phase"
            + (", OpenTelemetry tracing ON" if args.tracing else "")
        )
        sim_ps = psutil.Process(sim.pid)
        me = psutil.Process()
        s0, m0, t0 = sim_ps.cpu_times(), me.cpu_times(), time.monotonic()
        direct = asyncio.run(run_phase(sim_url, args.streams, args.seconds, args.max_tokens))
        s1, m1, direct_wall = sim_ps.cpu_times(), me.cpu_times(), time.monotonic() - t0
        direct_cpu = (_cpu(s1) - _cpu(s0), _cpu(m1) - _cpu(m0))
        tracing = ["--config", str(tracing_config(args.tracing_sink))] if args.tracing else []
        side = start_sidecar(sim_url, *tracing, wrap=wrap)
        assert side.url is not None
        side_url = side.url
        try:
            side_pid = side.pid
            if args.profile:
                # py-spy is the parent; the sidecar is its child (it printed the ready line).
                children = psutil.Process(side.pid).children()
                side_pid = children[0].pid if children else side.pid
            ps = psutil.Process(side_pid)
            # Warm up: imports, pools.
            asyncio.run(run_phase(side_url, 2, 0.5, 50))
            cpu0, s0, m0 = ps.cpu_times(), sim_ps.cpu_times(), me.cpu_times()
            t0 = time.monotonic()
            proxied = asyncio.run(run_phase(side_url, args.streams, args.seconds, args.max_tokens))
            wall = time.monotonic() - t0
            cpu1, s1, m1 = ps.cpu_times(), sim_ps.cpu_times(), me.cpu_times()
            proxied_cpu = (_cpu(s1) - _cpu(s0), _cpu(m1) - _cpu(m0))
            rss = peak_rss_mb(side_pid)
        finally:
            side.stop()
    finally:
        sim.stop()

    # Every stream has the same shape, so upstream events per stream = direct events per stream;
    # a phase waits for every stream it started, so all their events fall inside `wall`.
    per_stream = direct.events / max(direct.streams, 1)
    upstream_events = per_stream * proxied.streams
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    print(f"streams completed        direct {direct.streams}, via streamhop {proxied.streams}")
    print(f"errors                   direct {direct.errors}, via streamhop {proxied.errors}")
    print(f"upstream events/s        {upstream_events / wall:,.0f}")
    print(
        f"delivered events         {proxied.events} ({proxied.events / max(upstream_events, 1):.0%}"
        " of upstream)"
    )
    user = cpu1.user - cpu0.user
    print(
        f"sidecar CPU              {cpu:.2f} s over {wall:.1f} s ({cpu / wall:.0%} of one core; "
        f"user {user:.2f} s, kernel {cpu - user:.2f} s)"
    )
    print(
        f"sidecar CPU per event    {cpu / max(upstream_events, 1) * 1e6:.1f} us  (target <= 50 us)"
    )
    print(f"sidecar peak RSS         {rss:.1f} MB")
    print(
        f"machine load             direct: simulator {direct_cpu[0] / direct_wall:.0%}, client "
        f"{direct_cpu[1] / direct_wall:.0%}; via streamhop: simulator "
        f"{proxied_cpu[0] / wall:.0%}, client {proxied_cpu[1] / wall:.0%}, sidecar "
        f"{cpu / wall:.0%} (of one core; {psutil.cpu_count()} cores)"
    )
    d50, d99 = pct(direct.ttft_s, 0.50), pct(direct.ttft_s, 0.99)
    p50, p99 = pct(proxied.ttft_s, 0.50), pct(proxied.ttft_s, 0.99)
    print(f"TTFT direct              p50 {d50:.2f} ms  p99 {d99:.2f} ms")
    print(f"TTFT via streamhop       p50 {p50:.2f} ms  p99 {p99:.2f} ms")
    print(f"TTFT added               p50 {p50 - d50:+.2f} ms  p99 {p99 - d99:+.2f} ms")
    if args.profile and profile_out.exists():
        print_profile(profile_out)
    return 0


def print_profile(path: Path, top: int = 30) -> None:
    """Summarise py-spy's raw (collapsed stacks) output: self time per function, and the time
    spent below streamhop's own entry points (inclusive)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    print(f"\nhottest functions, self time ({total} samples):")
    for name, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {count / total:6.1%}  {name}")
    print("\ninclusive time of streamhop's own code:")
    ours = [(n, c) for n, c in inclusive.items() if "middleware/" in n or "sidecar/" in n]
    for name, count in sorted(ours, key=lambda kv: -kv[1])[:top]:
        print(f"  {count / total:6.1%}  {name}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
