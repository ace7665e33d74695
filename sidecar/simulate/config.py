"""The simulator's configuration and the per-request overrides taken from ``x-sim-*`` headers.

Units are in the field names: ``*_ms`` are milliseconds, ``*_per_second`` are rates per second of
wall time. Derived values the hot path needs (seconds per event, tokens per event) are properties,
computed from the fields so they can never disagree with them (the shape of uvicorn's ``Config``).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

from streamhop.sidecar.simulate.errors import SimulatorConfigError

#: Request headers that override one field for one request; values are decimal numbers.
OVERRIDE_HEADERS: Mapping[str, str] = {
    "x-sim-ttft-ms": "ttft_ms",
    "x-sim-events-per-second": "events_per_second",
    "x-sim-tokens-per-second": "tokens_per_second",
    "x-sim-max-tokens": "max_tokens",
    "x-sim-buffered-every-ms": "buffered_every_ms",
}

# Gaps between the split writes of one event only when an event interval leaves room for them:
# below ~1 ms an asyncio timer cannot be honoured, so faster paces write the parts back to back.
_MIN_SPLIT_GAP_S = 0.001
_MAX_SPLIT_GAP_S = 0.002


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the fake provider paces and shapes its answers.

    Attributes:
        ttft_ms: time to first token, in milliseconds, from request arrival to the first content
            event (earlier bookkeeping events such as ``message_start`` are sent at once).
        tokens_per_second: output tokens per second of wall time while streaming.
        events_per_second: SSE content events per second; each carries
            ``tokens_per_second / events_per_second`` tokens. ``0`` is burst: no pacing after the
            TTFT, one token per event.
        seed: seeds the generated text (with the prompt) and the split-write offsets.
        max_tokens: output length in tokens when the request names no limit.
        replay: an SSE recording; when set, every POST replays it instead of generating.
        timing: the recording's timeline (``[record]``'s ``.json``, needs ``replay``): the
            replay is written read by read at the recorded times (:mod:`.timing`) instead of
            event by event at this config's pace.
        split_writes: write each event in 2-3 pieces cut inside UTF-8 sequences and lines.
        buffered_every_ms: the ``buffered`` fault: a buffering hop between the provider and its
            client (a proxy with response buffering, a compressing middleware). Events are
            generated at the usual pace but held, and everything held is written at once every
            this many milliseconds from the request's arrival (the rest when the answer ends).
            ``0`` (default): off, every event is written when due.

    Raises:
        SimulatorConfigError: a rate or a duration is negative or not finite, ``max_tokens`` is
            below 1, or ``0 < tokens_per_second < events_per_second`` (an event cannot carry less
            than one token). ``key`` names the field.
    """

    ttft_ms: float = 50.0
    tokens_per_second: float = 2000.0
    events_per_second: float = 200.0
    seed: int = 0
    max_tokens: int = 400
    replay: pathlib.Path | None = None
    timing: pathlib.Path | None = None
    split_writes: bool = True
    buffered_every_ms: float = 0.0

    def __post_init__(self) -> None:
        for key in ("ttft_ms", "tokens_per_second", "events_per_second", "buffered_every_ms"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise SimulatorConfigError(key, f"expected a finite number >= 0, got {value!r}")
        if self.timing is not None and self.replay is None:
            raise SimulatorConfigError(
                "timing", "needs --replay FILE.sse: the recording this is the timing of"
            )
        if self.max_tokens < 1:
            raise SimulatorConfigError(
                "max_tokens", f"expected an integer >= 1, got {self.max_tokens!r}"
            )
        if 0 < self.tokens_per_second < self.events_per_second:
            raise SimulatorConfigError(
                "tokens_per_second",
                f"expected >= events_per_second ({self.events_per_second:g}) so that every event "
                f"carries at least one token, got {self.tokens_per_second:g}",
            )

    @property
    def ttft_s(self) -> float:
        """Time to first content event, in seconds."""
        return self.ttft_ms / 1000.0

    @property
    def buffered_every_s(self) -> float:
        """Seconds between the releases of the buffering hop; ``0.0``: no buffering."""
        return self.buffered_every_ms / 1000.0

    @property
    def interval_s(self) -> float:
        """Seconds between content events; ``0.0`` in burst mode."""
        return 1.0 / self.events_per_second if self.events_per_second > 0 else 0.0

    @property
    def tokens_per_event(self) -> float:
        """Mean tokens per content event (may be fractional; ``1.0`` in burst mode)."""
        if self.events_per_second > 0 and self.tokens_per_second > 0:
            return self.tokens_per_second / self.events_per_second
        return 1.0

    @property
    def split_gap_s(self) -> float:
        """Seconds between the split writes of one paced event; ``0.0`` writes them together.

        A quarter of the event interval, at most 2 ms, and only when that is at least 1 ms, so the
        pieces reach the reader in separate TCP reads without stretching past the next event.
        """
        gap = min(self.interval_s / 4.0, _MAX_SPLIT_GAP_S)
        return gap if gap >= _MIN_SPLIT_GAP_S else 0.0

    def with_overrides(self, headers: Mapping[str, str]) -> SimulatorConfig:
        """Return this config with the ``x-sim-*`` headers of one request applied.

        Args:
            headers: request headers (case-insensitive mapping, e.g. aiohttp's ``CIMultiDict``).

        Returns:
            ``self`` when no override header is present, else a validated copy.

        Raises:
            SimulatorConfigError: a header value is not a number or breaks a rule above; ``key``
                is the header name.
        """
        changes: dict[str, float | int] = {}
        for header, field in OVERRIDE_HEADERS.items():
            raw = headers.get(header)
            if raw is None:
                continue
            integer = field == "max_tokens"
            try:
                changes[field] = int(raw) if integer else float(raw)
            except ValueError:
                kind = "an integer" if integer else "a number"
                raise SimulatorConfigError(header, f"expected {kind}, got {raw!r}") from None
        if not changes:
            return self
        try:
            return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        except SimulatorConfigError as exc:
            # Name the header that broke the rule; a cross-field rule broken by the other rate's
            # header names that one (the only override present that could have caused it).
            culprits = [h for h, f in OVERRIDE_HEADERS.items() if f in changes]
            header = next((h for h in culprits if OVERRIDE_HEADERS[h] == exc.key), culprits[0])
            raise SimulatorConfigError(header, exc.reason) from None
