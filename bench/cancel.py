"""How fast a client's departure reaches the provider, through the sidecar.

Starts ``streamhop simulate`` and ``streamhop serve`` on loopback. Each trial opens a streaming
chat request with a raw socket, reads until either two content events arrived (``mid-stream``)
or the response headers and role chunk arrived while the provider still waits for its first
token (``before-first-token``, TTFT 5 s), then closes the socket. The simulator records, on the
same system-wide monotonic clock, when it saw its own connection close; the figure is
(upstream close seen by the provider) - (client close). The same trials straight against the
simulator give the floor: how long the provider alone takes to notice a close.

The client is a raw socket on purpose, not aiohttp: the close must happen at a known instant
(stamped just before ``close()``), on a connection nothing pools or reuses.

Usage: python -m bench.cancel [--trials 200]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import time
import urllib.request
import uuid
from typing import Any

import orjson

from bench.processes import start_sidecar, start_streamhop


def trial(url: str, kind: str) -> tuple[str, float]:
    """One client that leaves; returns its request id and when it closed (monotonic s)."""
    host, port = url.removeprefix("http://").split(":")
    rid = uuid.uuid4().hex
    body = orjson.dumps(
        {
            "model": "sim",
            "stream": True,
            "max_tokens": 2000,
            "messages": [{"role": "user", "content": "cancel me"}],
        }
    )
    extra = b"x-sim-ttft-ms: 5000\r\n" if kind == "before-first-token" else b""
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nx-request-id: "
        + rid.encode()
        + b"\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    seen = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("server closed first")
        seen += chunk
        if kind == "mid-stream" and seen.count(b'"content":"') >= 3:
            break
        if kind == "before-first-token" and b'"role":"assistant"' in seen and b"\n\n" in seen:
            break
    closed = time.monotonic()
    sock.close()
    return rid, closed


def sim_ends(sim_url: str, rids: set[str], bound_s: float = 30.0) -> dict[str, float]:
    deadline = time.monotonic() + bound_s
    while True:
        with urllib.request.urlopen(sim_url + "/_simulator/streams", timeout=10) as response:
            records: list[dict[str, Any]] = orjson.loads(response.read())
        ends = {
            r["id"]: r["ended"]
            for r in records
            if r["id"] in rids and r["outcome"] == "client_closed"
        }
        if len(ends) == len(rids) or time.monotonic() > deadline:
            return ends
        time.sleep(0.05)


def run(target: str, sim_url: str, kind: str, trials: int) -> list[float]:
    urllib.request.urlopen(urllib.request.Request(sim_url + "/_simulator/streams", method="DELETE"))
    closes = {}
    for _ in range(trials):
        rid, closed = trial(target, kind)
        closes[rid] = closed
        time.sleep(0.01)  # let each cancellation finish before the next trial starts
    ends = sim_ends(sim_url, set(closes))
    missing = len(closes) - len(ends)
    if missing:
        print(f"  warning: {missing} of {trials} closes never reached the provider")
    return [(ends[rid] - closes[rid]) * 1000 for rid in ends]


def show(label: str, values: list[float]) -> None:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
    print(
        f"  {label:<34} n={len(values):<4} p50 {statistics.median(values):6.2f} ms   "
        f"p99 {p99:6.2f} ms   max {values[-1]:6.2f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cancel", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--trials", type=int, default=200, help="trials per kind and path")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:  # stops what started, in reverse order
        sim = stack.enter_context(
            start_streamhop(
                ["simulate", "--listen", "127.0.0.1:0", "--ttft-ms", "20"], name="simulator"
            )
        )
        assert sim.url is not None
        sim_url = sim.url
        side = stack.enter_context(
            start_sidecar(sim_url)
        )
        assert side.url is not None
        side_url, admin = side.url, side.admin_url
        print(f"{args.trials} trials per kind; time from client close to provider seeing its close")
        for kind in ("mid-stream", "before-first-token"):
            print(kind)
            show("direct (provider's own floor)", run(sim_url, sim_url, kind, args.trials))
            show("through streamhop", run(side_url, sim_url, kind, args.trials))
        if admin:
            text = urllib.request.urlopen(admin + "/metrics", timeout=10).read().decode()
            total = count = 0.0
            for line in text.splitlines():
                if line.startswith("streamhop_cancel_latency_seconds_sum"):
                    total += float(line.rsplit(" ", 1)[1])
                if line.startswith("streamhop_cancel_latency_seconds_count"):
                    count += float(line.rsplit(" ", 1)[1])
            if count:
                print(
                    f"streamhop's own detection -> upstream close (metric): mean "
                    f"{total / count * 1000:.3f} ms over {count:.0f} cancellations"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
