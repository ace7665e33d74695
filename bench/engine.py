"""CPU cost of the sans-IO engine alone: decode + classify + merge + render + encode.

Feeds a synthetic Cerebras-like OpenAI chat stream (10 tokens per event, multi-byte text), one
upstream read per event (the worst case: reads rarely carry more at 200 events/s), with a 20 ms
window on a 5 ms event cadence, and prints microseconds of CPU per upstream event.

Usage: python -m bench.engine [--events 200000]
"""

from __future__ import annotations

import argparse
import time

import orjson

from streamhop.middleware import Coalescer, SSEDecoder, encode_events

WORDS = [
    "fast",
    " tokens",
    " 日本語",
    " 👩‍💻",
    " café",
    " stream",
    " e\u0301",
    " °C",
    " plumbing",
    " ok",
]


def make_events(n: int) -> list[bytes]:
    base = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "llama-3.3-70b",
        "system_fingerprint": "fp_x",
    }
    out = []
    for i in range(n):
        text = "".join(WORDS[(i + j) % len(WORDS)] for j in range(10))
        chunk = {
            **base,
            "choices": [
                {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
            ],
        }
        out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    reads = make_events(args.events)
    decoder = SSEDecoder()
    coalescer = Coalescer("auto", flush_interval=0.020)
    out_events = 0
    out_bytes = 0
    t0 = time.process_time()
    now = 0.0
    for data in reads:
        now += 0.005
        for event in decoder.feed(data):
            coalescer.push(event, now)
        if coalescer.due(now):
            events = coalescer.take()
            out_events += len(events)
            out_bytes += len(encode_events(events))
    cpu = time.process_time() - t0
    print(
        f"{args.events} upstream events -> {out_events} downstream; "
        f"{cpu / args.events * 1e6:.2f} us CPU per upstream event (engine only)"
    )


if __name__ == "__main__":
    main()
