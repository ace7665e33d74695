"""The README's first command ends in `streamhop demo`: it must run, show equal texts,
coalescing, and the sidecar's own metrics, and exit 0; every column of its table has a header,
and it prints no /metrics URL that is gone when it exits."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_prints_the_table_and_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamhop.sidecar.cli", "demo", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"final texts equal\s+yes", out)
    match = re.search(r"SSE events received\s+(\d+)\s+(\d+)", out)
    assert match is not None
    direct, proxied = int(match.group(1)), int(match.group(2))
    # 200 events/s with the default 20 ms window: at most a third reach the client.
    assert proxied <= direct / 3, (proxied, direct)
    assert "TTFT p50 (ms)" in out
    header = re.search(r"^\s+direct\s+via streamhop\s+vs direct$", out, re.MULTILINE)
    assert header is not None, out
    assert re.search(r"SSE events received\s+\d+\s+\d+\s+\d+% as many$", out, re.MULTILINE)
    assert "The sidecar's own view (scraped from its /metrics)" in out
    # Without --keep-running both processes stop: no URL of theirs may be printed.
    assert "http://" not in out, out
    assert "--keep-running" in out
