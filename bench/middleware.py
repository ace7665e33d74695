"""The ASGI middleware, measured: a Starlette app's CPU per event with and without it.

Issue 22, item 6. Starts two servers, each a separate process on 127.0.0.1 (uvicorn, one
process, its defaults: uvloop and httptools when installed, access log off):

* ``without``: a Starlette app whose ``POST /v1/chat/completions`` streams an SSE chat
  completion: a role chunk, ``--events`` content chunks (``{"choices":[{"index":0,"delta":
  {"content":"<a few tokens>"}, ...}]}``, one ``json.dumps`` each, as an app relaying its SDK's
  chunks would) paced at ``--rate`` per second on an absolute schedule, a ``finish_reason``
  chunk and ``data: [DONE]``; one ``yield`` of ``StreamingResponse``, so one ASGI ``send``,
  per event;
* ``with``: the same app wrapped in ``StreamHopMiddleware`` (default options).

Then, alternating the two over ``--rounds`` (round 1 without → with, round 2 with → without,
...), it keeps ``--streams`` concurrent streaming clients busy against one server for
``--seconds`` (the load client of bench/peers.py: raw asyncio + httptools, one keep-alive
connection per client, starts staggered over the first second; every request bounded by
``--request-timeout-s``, the whole phase by ``--seconds`` + that) and measures:

* the server process's CPU (on-CPU time of every thread, :class:`bench.procfs.TreeCpu`) per
  **app event** — the events the app yielded, counted by the app itself (``GET /stats``);
* the client's socket reads per stream and SSE events received per stream;
* TTFT (request written → the read that completes the first content event), p50 / p99; the
  app sends its first content at once, so "TTFT added" is with minus without.

Before the first phase it waits (polling every 30 s, at most ``--wait-max-s``) until the 1-minute
load average is below ``--max-load``, and prints the load before and after. Each server first
gets 2 s of the same load, not counted (its first requests pay lazy imports). ``--profile`` then
runs one more phase of each server under pyinstrument (not counted in the table) and prints
where the server's time goes, grouped by package.

Every process is started through :mod:`bench.processes` (ready when the server prints its
``listening on`` line), remembered by PID and stopped by that PID.

Usage: python -m bench.middleware [--streams 50] [--seconds 10] [--rounds 2] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.peers_client import Connection, Endpoint, Exchange
from bench.processes import LISTENING, Process, start
from bench.procfs import TreeCpu, loadavg

HERE = Path(__file__).resolve().parent
PATH = "/v1/chat/completions"
WORDS = (
    "The quick",
    " brown fox",
    " jumps over",
    " the lazy",
    " dog, and",
    " then it",
    " rests a",
    " little.",
)


# --- the server (child process) -------------------------------------------------------------


def build_app(events: int, rate: float, middleware: bool) -> Any:
    """The Starlette app; wrapped in ``StreamHopMiddleware`` (defaults) when ``middleware``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    stats = {"events": 0, "streams": 0}
    interval = 1.0 / rate

    def chunk(cid: str, created: int, delta: dict[str, str], finish: str | None = None) -> str:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": "bench-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    async def stream() -> Any:
        loop = asyncio.get_running_loop()
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        stats["streams"] += 1
        stats["events"] += 1
        yield chunk(cid, created, {"role": "assistant", "content": ""})
        start = loop.time()
        for i in range(events):
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            stats["events"] += 1
            yield chunk(cid, created, {"content": WORDS[i % len(WORDS)]})
        stats["events"] += 2
        yield chunk(cid, created, {}, "stop")
        yield "data: [DONE]\n\n"

    async def chat(request: Request) -> Response:
        await request.body()
        return StreamingResponse(stream(), media_type="text/event-stream")

    async def get_stats(request: Request) -> Response:
        return JSONResponse(stats)

    stack = []
    if middleware:
        from streamhop.middleware import StreamHopMiddleware

        stack.append(Middleware(StreamHopMiddleware))
    routes = [Route(PATH, chat, methods=["POST"]), Route("/stats", get_stats)]
    return Starlette(routes=routes, middleware=stack)


def serve(args: argparse.Namespace) -> None:
    """Run one server in this process until SIGTERM (uvicorn's graceful shutdown)."""
    import uvicorn

    class Announcing(uvicorn.Server):
        """Prints the line the parent waits for, once listening, with the port really bound."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                port = self.servers[0].sockets[0].getsockname()[1]
                print(f"bench middleware app listening on http://127.0.0.1:{port}", flush=True)

    app = build_app(args.events, args.rate, args.middleware)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.serve,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = Announcing(config)
    # uvicorn re-raises the SIGTERM it handled once it has shut down, with the handler it
    # found installed: a no-op one lets run() return (and the profile be written).
    signal.signal(signal.SIGTERM, lambda *_: None)
    if not args.profile_out:
        server.run()
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        server.run()
    finally:
        profiler.stop()
        Path(args.profile_out).write_text(json.dumps(self_times(profiler.last_session)))


def self_times(session: Any) -> dict[str, float]:
    """Sampled seconds per innermost Python function ``file:function`` (self time)."""
    out: dict[str, float] = {}
    stack: list[tuple[Any, str]] = [(session.root_frame(), "?")]
    while stack:
        frame, parent = stack.pop()
        if frame is None:
            continue
        key = f"{frame.file_path or '?'}:{frame.function}"
        if (frame.file_path or "").startswith("<"):
            # A C function (json.loads, transport.write): counted with its Python caller.
            key = f"{parent} > {frame.function}"
        stack.extend((child, key) for child in frame.children)
        if frame.is_synthetic:
            continue
        own = frame.total_self_time
        if own > 0:
            out[key] = out.get(key, 0.0) + own
    return out


# --- the driver (parent process) ------------------------------------------------------------


@dataclass
class Server:
    """One server process we started."""

    name: str
    proc: Process
    port: int

    def stop(self) -> None:
        """SIGTERM to its PID, SIGKILL after 20 s."""
        self.proc.stop()


def start_server(name: str, args: argparse.Namespace, profile_out: str | None = None) -> Server:
    """Start ``python -m bench.middleware --serve 0`` and wait for its ``listening on`` line."""
    argv = [
        sys.executable,
        "-m",
        "bench.middleware",
        "--serve",
        "0",
        "--events",
        str(args.events),
        "--rate",
        f"{args.rate:g}",
    ]
    if name == "with":
        argv.append("--middleware")
    if profile_out:
        argv += ["--profile-out", profile_out]
    # The child imports bench.middleware from the repository root, whatever our cwd.
    proc = start(argv, name=f"server {name!r}", ready=LISTENING, cwd=HERE.parent, echo=True)
    assert proc.url is not None
    return Server(name, proc, int(proc.url.rsplit(":", 1)[1]))


def stats(server: Server) -> dict[str, int]:
    """The app's own counters: events yielded and streams started."""
    url = f"http://127.0.0.1:{server.port}/stats"
    with urllib.request.urlopen(url, timeout=5) as response:
        return dict(json.loads(response.read()))


@dataclass
class Phase:
    """One load phase against one server."""

    name: str
    round: int
    cpu_s: float = 0.0
    wall_s: float = 0.0
    app_events: int = 0
    app_streams: int = 0
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)

    @property
    def us_per_event(self) -> float:
        return self.cpu_s / self.app_events * 1e6 if self.app_events else float("nan")


async def drive(
    server: Server, streams: int, seconds: float, timeout_s: float, phase: Phase
) -> None:
    """``streams`` clients, each streaming request after request until ``seconds`` are over."""

    class CountingConn(Connection):
        """The bench client's connection, counting socket reads."""

        reads = 0

        def data_received(self, data: bytes) -> None:
            self.reads += 1
            super().data_received(data)

    endpoint = Endpoint("127.0.0.1", server.port, path=PATH)
    body = json.dumps(
        {"model": "bench-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + seconds
    stagger_s = min(1.0, seconds / 2) / streams

    async def client(i: int) -> None:
        await asyncio.sleep(i * stagger_s)
        conn: CountingConn | None = None
        try:
            while time.monotonic() < deadline:
                ex = Exchange(uuid.uuid4().hex)
                try:
                    if conn is None or conn.lost or not conn.keep_alive:
                        if conn is not None and conn.transport is not None:
                            conn.transport.abort()
                        _, conn = await loop.create_connection(
                            CountingConn, endpoint.host, endpoint.port
                        )
                    conn.reads = 0
                    waiter = conn.start(ex, endpoint.request(body, ex.rid), record_arrivals=False)
                    await asyncio.wait_for(waiter, timeout_s)
                except (OSError, TimeoutError) as exc:
                    ex.error = ex.error or f"{type(exc).__name__}: {exc}"
                    if conn is not None and conn.transport is not None:
                        conn.transport.abort()
                    conn = None
                if ex.ok and ex.first_content is not None and conn is not None:
                    phase.ok += 1
                    phase.reads.append(conn.reads)
                    phase.events.append(ex.events)
                    phase.ttft_ms.append((ex.first_content - ex.sent) * 1e3)
                else:
                    phase.errors.append(ex.error or f"status {ex.status}")
                    await asyncio.sleep(0.05)
        finally:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()

    tasks = [asyncio.ensure_future(client(i)) for i in range(streams)]
    _, pending = await asyncio.wait(tasks, timeout=seconds + timeout_s + 5)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run_phase(server: Server, args: argparse.Namespace, rnd: int) -> Phase:
    """One measured phase: CPU of the server's process tree while the clients run."""
    phase = Phase(server.name, rnd)
    before = stats(server)
    t0 = time.monotonic()
    with TreeCpu(server.proc.pid) as cpu:
        asyncio.run(drive(server, args.streams, args.seconds, args.request_timeout_s, phase))
    phase.wall_s = time.monotonic() - t0
    after = stats(server)
    phase.cpu_s = cpu.seconds
    phase.app_events = after["events"] - before["events"]
    phase.app_streams = after["streams"] - before["streams"]
    return phase


def wait_for_quiet(max_load: float, max_wait_s: float) -> tuple[float, float, float]:
    """Poll every 30 s until the 1-minute load is below ``max_load`` (at most ``max_wait_s``)."""
    deadline = time.monotonic() + max_wait_s
    load = loadavg()
    while load[0] >= max_load and time.monotonic() < deadline:
        print(f"load {load[0]:.2f} >= {max_load}: waiting 30 s", flush=True)
        time.sleep(30)
        load = loadavg()
    return load


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1), nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def pooled(phases: list[Phase]) -> Phase:
    """Every phase of one server summed into one."""
    out = Phase(phases[0].name, 0)
    for p in phases:
        out.cpu_s += p.cpu_s
        out.wall_s += p.wall_s
        out.app_events += p.app_events
        out.app_streams += p.app_streams
        out.ok += p.ok
        out.errors += p.errors
        out.reads += p.reads
        out.events += p.events
        out.ttft_ms += p.ttft_ms
    return out


def table(phases: list[Phase]) -> str:
    """The Markdown table: pooled figures, without / with / ratio, then each round."""
    a = pooled([p for p in phases if p.name == "without"])
    b = pooled([p for p in phases if p.name == "with"])

    def mean(xs: list[int]) -> float:
        return statistics.fmean(xs) if xs else float("nan")

    def ratio(x: float, y: float) -> str:
        return f"{y / x:.2f}\N{MULTIPLICATION SIGN}" if x else "—"

    rows = [
        "| | without | with `StreamHopMiddleware` | ratio (with / without) |",
        "| --- | ---: | ---: | ---: |",
        f"| server CPU per app event (µs) | {a.us_per_event:.1f} | {b.us_per_event:.1f} "
        f"| {ratio(a.us_per_event, b.us_per_event)} |",
    ]
    for rnd in sorted({p.round for p in phases}):
        pa = next(p for p in phases if p.name == "without" and p.round == rnd)
        pb = next(p for p in phases if p.name == "with" and p.round == rnd)
        rows.append(
            f"| ... round {rnd} ({'without first' if rnd % 2 else 'with first'}) "
            f"| {pa.us_per_event:.1f} | {pb.us_per_event:.1f} "
            f"| {ratio(pa.us_per_event, pb.us_per_event)} |"
        )
    ra, rb = mean(a.reads), mean(b.reads)
    ea, eb = mean(a.events), mean(b.events)
    rows += [
        f"| client socket reads per stream | {ra:.1f} | {rb:.1f} | {ratio(ra, rb)} |",
        f"| SSE events received per stream | {ea:.1f} | {eb:.1f} | {ratio(ea, eb)} |",
    ]
    ta, tb = pct(a.ttft_ms, 0.5), pct(b.ttft_ms, 0.5)
    ta99, tb99 = pct(a.ttft_ms, 0.99), pct(b.ttft_ms, 0.99)
    rows += [
        f"| TTFT p50 / p99 (ms) | {ta:.2f} / {ta99:.2f} | {tb:.2f} / {tb99:.2f} | "
        f"added {tb - ta:+.2f} / {tb99 - ta99:+.2f} ms |",
        f"| server CPU share (% of one core) | {a.cpu_s / a.wall_s * 100:.0f} "
        f"| {b.cpu_s / b.wall_s * 100:.0f} | |",
        f"| app events / streams (all rounds) | {a.app_events:,} / {a.app_streams} "
        f"| {b.app_events:,} / {b.app_streams} | |",
        f"| streams ok / failed | {a.ok} / {len(a.errors)} | {b.ok} / {len(b.errors)} | |",
    ]
    return "\n".join(rows)


SRC = f"{HERE.parent}/middleware/"  # streamhop's source in this checkout (editable install)
GROUPS = (
    ("streamhop asgi (middleware, responder)", f"{SRC}asgi/"),
    ("streamhop rechunk (formats, coalescer)", f"{SRC}rechunk/"),
    ("streamhop observe (metrics, bursts)", f"{SRC}observe/"),
    ("streamhop other (pump, sse decoder)", SRC),
    ("prometheus_client", "/prometheus_client/"),
    ("starlette", "/starlette/"),
    ("uvicorn", "/uvicorn/"),
    ("json (app)", "/json/"),
    ("bench app", "/bench/middleware.py"),
    ("asyncio", "/asyncio/"),
)


def group_of(key: str) -> str:
    """The package a sampled function belongs to (a C function: its caller's)."""
    key = key.split(" > ", 1)[0]
    for name, needle in GROUPS:
        if needle in key:
            return name
    return "other"


def profile(args: argparse.Namespace) -> str:
    """One unmeasured phase per server under pyinstrument; self time grouped by package."""
    out = []
    tmp = Path(tempfile.mkdtemp(prefix="streamhop-bench-mw-"))
    try:
        for name in ("without", "with"):
            path = tmp / f"{name}.json"
            server = start_server(name, args, str(path))
            try:
                events = run_phase(server, args, 0).app_events
            finally:
                server.stop()
            times: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
            # The loop's idle wait shows as the self time of the frame that runs the loop.
            busy = {k: v for k, v in times.items() if "asyncio/runners.py:run" not in k}
            total = sum(busy.values()) or 1.0
            groups: dict[str, float] = {}
            for key, secs in busy.items():
                groups[group_of(key)] = groups.get(group_of(key), 0.0) + secs
            per = 1e6 / events if events else float("nan")
            out.append(
                f"\n#### {name}: sampled busy time by package ({total:.2f} s, "
                f"{total * per:.1f} µs per app event under the profiler)\n"
            )
            for g, secs in sorted(groups.items(), key=lambda kv: -kv[1]):
                out.append(f"- {g}: {secs / total * 100:.1f} % ({secs * per:.1f} µs/event)")
            out.append("\ntop functions (self time):\n")
            for key, secs in sorted(busy.items(), key=lambda kv: -kv[1])[:25]:
                short = key.replace(str(HERE.parent), "").replace(sys.prefix, "<venv>")
                out.append(f"- {secs / total * 100:5.1f} %  {short}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.middleware", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--streams", type=int, default=50, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--events", type=int, default=400, help="content events per stream")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s per stream")
    parser.add_argument("--request-timeout-s", type=float, default=30.0)
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--wait-max-s", type=float, default=600.0)
    parser.add_argument("--profile", action="store_true", help="then profile both servers")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--middleware", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args)
        return 0

    try:
        loop_name = f"uvloop {version('uvloop')}"
    except ImportError:
        loop_name = "asyncio"
    print(
        f"Python {sys.version.split()[0]}, uvicorn {version('uvicorn')} ({loop_name}, "
        f"httptools {version('httptools')}), starlette {version('starlette')}; "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    before = wait_for_quiet(args.max_load, args.wait_max_s)
    print("load before: {:.2f} / {:.2f} / {:.2f}".format(*before), flush=True)
    phases: list[Phase] = []
    servers = {name: start_server(name, args) for name in ("without", "with")}
    try:
        warm = argparse.Namespace(**{**vars(args), "seconds": 2.0})
        for server in servers.values():
            run_phase(server, warm, 0)  # first requests (lazy imports, caches): not counted
        for rnd in range(1, args.rounds + 1):
            order = ("without", "with") if rnd % 2 else ("with", "without")
            for name in order:
                phase = run_phase(servers[name], args, rnd)
                phases.append(phase)
                print(
                    f"round {rnd} {name:>7}: {phase.us_per_event:.1f} µs/app event, "
                    f"{phase.app_events:,} events, {phase.ok} ok, {len(phase.errors)} failed",
                    flush=True,
                )
                time.sleep(1)
    finally:
        for server in servers.values():
            server.stop()
    after = loadavg()
    print("load after: {:.2f} / {:.2f} / {:.2f}".format(*after))
    errors = [e for p in phases for e in p.errors]
    if errors:
        print(f"errors (first 5 of {len(errors)}): {errors[:5]}")
    print()
    print(table(phases))
    if args.profile:
        print(profile(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
