"""The IO-stack spike of issue 22: the smallest streaming relay on each stack, one harness.

Starts ONE ``streamhop simulate`` (200 SSE events/s, 10 tokens/event, TTFT 20 ms, one write per
event) and, in front of it on loopback, each relay of this folder plus nginx
(``proxy_buffering off``, one worker, as in bench/peers_targets.py) as the reference. Every relay
is a pure byte relay: no SSE decoding, no re-chunking; what differs is only the IO stack.

Scenarios, interleaved (each scenario runs on every stack before the next, the order rotating):

* ``1`` / ``50`` / ``200 streams``: that many streams kept open for ``--duration-s`` (each 400
  content events, ~2 s), by bench/peers_client.py's client (uvloop + httptools, one keep-alive
  connection per stream); then every stream started is let finish (bounded by ``--grace-s``);
* ``non-streaming``: ``--requests`` small JSON answers (``stream: false``, 10 tokens) over 20
  keep-alive connections, each connection one request at a time.

CPU is the relay's whole process tree (every thread's ``schedstat``, sampled every 100 ms:
``TreeCpu`` of bench/procfs.py) over the scenario, divided by the SSE events the client
received (a byte relay delivers every upstream event) or by the requests answered.

Prints one Markdown table (µs, and the ratio to nginx when nginx runs) and a second with the
errors and the client's TTFT p50/p99 at 200 streams.

Usage: .venv/bin/python -m bench.spike.run [--duration-s 3] [--requests 2000] [--stacks a,b,...]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import peers_targets as pt
from bench.peers_client import Connection, Endpoint, Exchange, connect, run_load
from bench.processes import free_port
from bench.procfs import TreeCpu

SPIKE_VENV = pt.ROOT / "build" / "spike-venv"
MAIN_PY = pt.ROOT / ".venv" / "bin" / "python"
STREAM_TOKENS = 4000  # 400 content events at 200 events/s: ~2 s per stream
JSON_TOKENS = 10
JSON_CONNECTIONS = 20


@dataclass(frozen=True)
class Stack:
    """One relay: how to start it and what it is."""

    name: str
    label: str
    argv: list[str]  # {port} and {upstream} are filled in; empty for nginx
    python: Path = MAIN_PY
    env: dict[str, str] = field(default_factory=dict)


STACKS = (
    Stack("nginx", "nginx (reference)", []),
    Stack(
        "a-uvicorn-aiohttp",
        "(a) uvicorn+httptools / aiohttp client",
        [
            "{py}",
            "-m",
            "bench.spike.relay_uvicorn_aiohttp",
            "--port",
            "{port}",
            "--upstream",
            "{upstream}",
        ],
    ),
    Stack(
        "b-raw-protocols",
        "(b) uvloop Protocols + httptools both sides",
        ["{py}", "-m", "bench.spike.relay_raw", "--port", "{port}", "--upstream", "{upstream}"],
    ),
    Stack(
        "c-granian-aiohttp",
        "(c) granian RSGI / aiohttp client",
        [
            str(SPIKE_VENV / "bin" / "granian"),
            "--interface",
            "rsgi",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--no-ws",
            "--http",
            "1",
            "--log-level",
            "warning",
            "--no-access-log",
            "--working-dir",
            str(pt.ROOT),
            "bench.spike.relay_granian_aiohttp:app",
        ],
        python=SPIKE_VENV / "bin" / "python",
        env={"SPIKE_UPSTREAM": "{upstream}"},
    ),
    Stack(
        "d1-uvicorn-pyreqwest",
        "(d1) uvicorn+httptools / pyreqwest client",
        [
            "{py}",
            "-m",
            "bench.spike.relay_uvicorn_pyreqwest",
            "--port",
            "{port}",
            "--upstream",
            "{upstream}",
        ],
        python=SPIKE_VENV / "bin" / "python",
    ),
    Stack(
        "d2-uvicorn-aiosonic",
        "(d2) uvicorn+httptools / aiosonic client",
        [
            "{py}",
            "-m",
            "bench.spike.relay_uvicorn_aiosonic",
            "--port",
            "{port}",
            "--upstream",
            "{upstream}",
        ],
        python=SPIKE_VENV / "bin" / "python",
    ),
)
SCENARIOS = (("1 stream", 1), ("50 streams", 50), ("200 streams", 200), ("non-streaming", 0))


def body(tokens: int, stream: bool) -> bytes:
    payload = {
        "model": "sim",
        "messages": [{"role": "user", "content": "Benchmark the plumbing, not the model."}],
        "max_tokens": tokens,
        "stream": stream,
    }
    return json.dumps(payload).encode()


def start(stack: Stack, sim_url: str) -> pt.Target:
    """Start ``stack`` in front of the simulator; a failed start is a Target with ``missing``."""
    if stack.name == "nginx":
        target = pt.nginx(sim_url)
        target.name = stack.name
        return target
    if (
        not stack.python.exists()
        or not Path(stack.argv[0].replace("{py}", str(stack.python))).exists()
    ):
        return pt.Target(
            stack.name, stack.label, missing=f"{stack.python} or {stack.argv[0]} not found"
        )
    port = free_port()
    fill = {"{py}": str(stack.python), "{port}": str(port), "{upstream}": sim_url}
    argv = [fill.get(a, a) for a in stack.argv]
    # The relays import bench.spike.common: the repository root goes on their sys.path.
    env = {"PYTHONPATH": str(pt.ROOT), **{k: fill.get(v, v) for k, v in stack.env.items()}}
    tmp = Path(tempfile.mkdtemp(prefix=f"streamhop-spike-{stack.name}-"))
    target = pt.Target(stack.name, stack.label, Endpoint("127.0.0.1", port), tmpdir=tmp)
    return pt.launch(target, argv, env=env, timeout_s=30)


async def json_load(endpoint: Endpoint, requests: int, timeout_s: float) -> list[Exchange]:
    """``requests`` non-streamed requests over JSON_CONNECTIONS keep-alive connections."""
    payload = body(JSON_TOKENS, False)
    per_conn = [
        requests // JSON_CONNECTIONS + (i < requests % JSON_CONNECTIONS)
        for i in range(JSON_CONNECTIONS)
    ]
    done: list[Exchange] = []

    async def worker(n: int) -> None:
        conn: Connection | None = None
        try:
            for i in range(n):
                ex = Exchange(f"json-{id(done)}-{n}-{i}")
                done.append(ex)
                if conn is None or conn.lost or not conn.keep_alive:
                    if conn is not None and conn.transport is not None:
                        conn.transport.close()
                    conn = await connect(endpoint)
                await conn.start(ex, endpoint.request(payload, ex.rid), record_arrivals=False)
        finally:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()

    tasks = [asyncio.ensure_future(worker(n)) for n in per_conn]
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for ex in done:
        if ex.done is None and ex.error is None:
            ex.error = "unfinished"
    return done


@dataclass
class Cell:
    cpu_s: float = 0.0
    units: int = 0  # events (streams) or requests (non-streaming)
    errors: int = 0
    exchanges: int = 0
    ttft_s: list[float] = field(default_factory=list)

    @property
    def us_per_unit(self) -> float:
        return self.cpu_s / self.units * 1e6 if self.units else float("nan")


def measure(target: pt.Target, scenario: str, concurrency: int, args: argparse.Namespace) -> Cell:
    assert target.endpoint is not None
    cell = Cell()
    cpu = TreeCpu(target.pid)
    with cpu:
        if concurrency:
            payload = body(STREAM_TOKENS, True)
            exchanges = asyncio.run(
                run_load(
                    target.endpoint,
                    lambda: payload,
                    concurrency=concurrency,
                    duration_s=args.duration_s,
                    grace_s=args.grace_s,
                    record_arrivals=False,
                )
            )
        else:
            exchanges = asyncio.run(json_load(target.endpoint, args.requests, args.grace_s * 4))
    cell.cpu_s = cpu.seconds
    cell.exchanges = len(exchanges)
    cell.errors = sum(1 for ex in exchanges if not ex.ok)
    if concurrency:
        cell.units = sum(ex.events for ex in exchanges)
        cell.ttft_s = [ex.first_content - ex.sent for ex in exchanges if ex.first_content]
    else:
        cell.units = sum(1 for ex in exchanges if ex.ok)
    return cell


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(live: list[pt.Target], cells: dict[tuple[str, str], Cell]) -> str:
    ref = "nginx" if any(t.name == "nginx" for t in live) else None
    rows = [
        "| stack | "
        + " | ".join(f"{s} (µs/{'event' if c else 'request'})" for s, c in SCENARIOS)
        + " |"
    ]
    rows.append("| --- |" + " ---: |" * len(SCENARIOS))
    for t in live:
        out = []
        for scen, _ in SCENARIOS:
            cell = cells.get((t.name, scen))
            if cell is None:
                out.append("—")
                continue
            text = f"{cell.us_per_unit:,.1f}"
            if ref and t.name != ref and (ref, scen) in cells:
                ratio = cell.us_per_unit / cells[ref, scen].us_per_unit
                text += f" ({ratio:.1f}×)"  # noqa: RUF001 (the report is for people)
            out.append(text)
        rows.append(f"| {t.label} | " + " | ".join(out) + " |")
    rows.append("")
    rows.append(
        "| stack | errors / exchanges (all scenarios) | TTFT p50 / p99 at 200 streams (ms)"
        " | events or requests counted |"
    )
    rows.append("| --- | ---: | ---: | --- |")
    for t in live:
        errs = sum(cells[t.name, s].errors for s, _ in SCENARIOS if (t.name, s) in cells)
        total = sum(cells[t.name, s].exchanges for s, _ in SCENARIOS if (t.name, s) in cells)
        c200 = cells.get((t.name, "200 streams"))
        ttft = (
            f"{pct(c200.ttft_s, 0.5) * 1e3:.1f} / {pct(c200.ttft_s, 0.99) * 1e3:.1f}"
            if c200
            else "—"
        )
        counts = ", ".join(
            f"{cells[t.name, s].units}" for s, _ in SCENARIOS if (t.name, s) in cells
        )
        rows.append(f"| {t.label} | {errs} / {total} | {ttft} | {counts} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.spike.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--duration-s", type=float, default=3.0, help="seconds new streams start, per scenario"
    )
    parser.add_argument(
        "--grace-s", type=float, default=10.0, help="bound for started streams to finish"
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="non-streaming requests per stack"
    )
    parser.add_argument(
        "--stacks", default=",".join(s.name for s in STACKS), help="comma-separated subset"
    )
    args = parser.parse_args()
    wanted = [n.strip() for n in args.stacks.split(",") if n.strip()]
    stacks = [s for s in STACKS if s.name in wanted]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    started = dt.datetime.now(dt.UTC)
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}", flush=True)
    sim = pt.start_simulator(200, 10, 20)
    assert sim.url is not None
    sim_url = sim.url
    targets: list[pt.Target] = []
    cells: dict[tuple[str, str], Cell] = {}
    old_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for stack in stacks:
            target = start(stack, sim_url)
            target.label = stack.label if stack.name != "nginx" else target.label
            port = target.endpoint.port if target.endpoint is not None else None
            print(f"{stack.name}: {target.missing or f'up, port {port}'}", flush=True)
            targets.append(target)
        live = [t for t in targets if not t.missing]
        for si, (scen, conc) in enumerate(SCENARIOS):
            order = live[si % len(live) :] + live[: si % len(live)]
            for target in order:
                t0 = time.monotonic()
                cells[target.name, scen] = cell = measure(target, scen, conc, args)
                print(
                    f"  {scen:<14} {target.name:<22} {cell.us_per_unit:8.1f} µs  "
                    f"units {cell.units}  errors {cell.errors}/{cell.exchanges}  "
                    f"{time.monotonic() - t0:.1f} s",
                    flush=True,
                )
                time.sleep(0.3)
    finally:
        for target in targets:
            target.stop()
        sim.stop()
        signal.signal(signal.SIGTERM, old_term)
    after = os.getloadavg()
    print()
    print(
        f"run started {started.isoformat(timespec='seconds')}; {os.cpu_count()} cores; "
        f"load average before {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, "
        f"after {after[0]:.2f} / {after[1]:.2f} / {after[2]:.2f}"
    )
    print(f"command: .venv/bin/python -m bench.spike.run {' '.join(sys.argv[1:])}".rstrip())
    for target in targets:
        if target.missing:
            print(f"missing: {target.name}: {target.missing}")
    print()
    print(table(live, cells))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
