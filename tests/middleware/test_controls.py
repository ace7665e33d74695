"""The ``X-Streamhop-*`` parser shared by the sidecar and the middleware."""

from __future__ import annotations

import pytest

from streamhop.middleware.controls import (
    MAX_TIMEOUT_MS,
    NO_CONTROLS,
    ControlHeaderError,
    Controls,
    parse_controls,
)


def test_values_and_any_case() -> None:
    controls = parse_controls(
        [
            (b"X-Streamhop-Flush-Interval-Ms", b" 12.5 "),
            (b"x-streamhop-mode", b"passthrough"),
            (b"x-streamhop-timeout-ms", b"1500"),
            (b"x-streamhop-unknown", b"ignored"),
            (b"authorization", b"Bearer k"),
        ]
    )
    assert controls == Controls(flush_interval_ms=12.5, mode="passthrough", timeout_ms=1500)
    assert parse_controls([(b"accept", b"*/*")]) is NO_CONTROLS


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        (b"x-streamhop-flush-interval-ms", b"soon", "X-Streamhop-Flush-Interval-Ms"),
        (b"x-streamhop-flush-interval-ms", b"-1", "X-Streamhop-Flush-Interval-Ms"),
        (b"x-streamhop-flush-interval-ms", b"inf", "finite"),
        (b"x-streamhop-flush-interval-ms", b"nan", "finite"),
        (b"x-streamhop-mode", b"fast", "X-Streamhop-Mode"),
        (b"x-streamhop-timeout-ms", b"0", "X-Streamhop-Timeout-Ms"),
        (b"x-streamhop-timeout-ms", b"1e300", str(MAX_TIMEOUT_MS)),
    ],
)
def test_invalid_values_name_the_header(name: bytes, value: bytes, needle: str) -> None:
    with pytest.raises(ControlHeaderError, match=needle):
        parse_controls([(name, value)])


def test_timeout_only_shortens_the_route_deadline() -> None:
    assert Controls(timeout_ms=100_000).deadline_s(1.5) == 1.5
    assert Controls(timeout_ms=200).deadline_s(1.5) == 0.2
    assert Controls(timeout_ms=200).deadline_s(None) == 0.2
    assert Controls().deadline_s(None) is None
    assert Controls().deadline_s(3.0) == 3.0


def test_message_controls_over_handshake_controls() -> None:
    handshake = Controls(flush_interval_ms=5, mode="coalesce", timeout_ms=1000)
    message = Controls(mode="passthrough")
    assert message.over(handshake) == Controls(5, "passthrough", 1000)


def test_apply_overrides_only_what_the_request_sent() -> None:
    from streamhop.middleware.pump_types import PumpOptions

    base = PumpOptions(flush_interval_s=0.02, passthrough=False, flush_boundary="none")
    assert Controls().apply(base) is base
    changed = Controls(flush_interval_ms=5, mode="passthrough", flush_boundary="word").apply(base)
    assert (changed.flush_interval_s, changed.passthrough, changed.flush_boundary) == (
        0.005,
        True,
        "word",
    )
    assert changed.max_pending_bytes == base.max_pending_bytes
    assert Controls(mode="coalesce").apply(changed).passthrough is False
