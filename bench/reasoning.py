"""Per provider recording: what the re-chunker merges, and when the first answer is written.

Replays every recording in ``tests/fixtures`` through the stream engine (the coalescer with its
default 20 ms window) at a fast provider's pace, 5 ms between events (200 events/s), on a
simulated clock, so the numbers are the engine's own and repeat exactly:

* ``events in`` / ``events out`` and their ratio (what a client's SSE parser and UI handle);
* ``answer +ms``: when the first answer text (after any reasoning) is written, minus when it
  arrived — what re-chunking adds to the TTFT a reasoning model's user sees.

The socket edges add their own cost on top (docs/performance.md measures those side by side
with nginx); this table is about the engine's merge and flush rules.

Run: ``python -m bench.reasoning`` (prints a Markdown table).
"""

from __future__ import annotations

import sys
from pathlib import Path

from streamhop.middleware import Coalescer, SSEDecoder, SSEEvent

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
PACE_S = 0.005
WINDOW_S = 0.020


def events_of(path: Path) -> list[SSEEvent]:
    decoder = SSEDecoder(4 * 1024 * 1024)
    return decoder.feed(path.read_bytes()) + decoder.feed(b"")


def replay(events: list[SSEEvent]) -> tuple[int, float | None, str]:
    """Push ``events`` PACE_S apart, write whenever due (a writer that is always free).

    Returns:
        ``(events written, first-answer delay in seconds or None, format)``.
    """
    coalescer = Coalescer(flush_interval=WINDOW_S)
    written = 0
    answer_at: float | None = None
    answer_written: float | None = None
    now = 0.0

    def take(at: float) -> None:
        nonlocal written, answer_written
        out = coalescer.take(at)
        written += len(out)
        if out and answer_at is not None and answer_written is None:
            answer_written = at

    for i, event in enumerate(events):
        now = i * PACE_S
        deadline = coalescer.deadline
        if deadline is not None and deadline <= now and coalescer.due(deadline):
            take(deadline)
        coalescer.push(event, now)
        if answer_at is None and coalescer.first_answer_at is not None:
            answer_at = coalescer.first_answer_at
        if coalescer.due(now):
            take(now)
    take(now)
    delay = None if answer_at is None or answer_written is None else answer_written - answer_at
    return written, delay, coalescer.format_name or "?"


MARKERS = {
    "openai-chat": (
        ('"reasoning_content":"', "reasoning_content"),
        ('"reasoning_details":[{', "reasoning_details"),
        ('"reasoning":"', "reasoning"),
        ('"channel":"analysis"', "channel label"),
        ('"type":"thinking"', "thinking parts"),
        ("\\u003cthink\\u003e", "<think> in content"),
        ("<think>", "<think> in content"),
    ),
    "anthropic": (("thinking_delta", "thinking_delta"),),
    "openai-responses": (
        ("response.reasoning_summary_text.delta", "reasoning_summary_text"),
        ("response.reasoning_text.delta", "reasoning_text"),
    ),
}


def reasoning_field(events: list[SSEEvent], fmt: str) -> str:
    """Which reasoning fields the recording's deltas use (for the table)."""
    found: list[str] = []
    for marker, name in MARKERS.get(fmt, ()):
        if name not in found and any(marker in (e.data or "") for e in events):
            found.append(name)
    return ", ".join(found) or "—"


def main() -> int:
    print("| recording | format | reasoning | events in | events out | ratio | answer +ms |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for path in sorted(FIXTURES.glob("*.sse")):
        events = events_of(path)
        out, delay, fmt = replay(events)
        answer = "—" if delay is None else f"{delay * 1000:.1f}"
        n = len(events)
        print(
            f"| {path.stem} | {fmt} | {reasoning_field(events, fmt)} | {n} | {out} "
            f"| {out / n:.2f} | {answer} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
