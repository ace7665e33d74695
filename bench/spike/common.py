"""What every spike relay shares: its command line and which headers it forwards.

A relay is started as ``python -m bench.spike.relay_X --port P --upstream http://127.0.0.1:U``
with the repository root on ``sys.path`` (its cwd, or ``PYTHONPATH``); it listens on
127.0.0.1:P and relays each request to the upstream, byte for byte (no re-chunking, no JSON):
request headers minus the hop-by-hop ones go up, the status, ``content-type`` and the framing
(``content-length`` when the upstream sent one, else chunked) come back.
"""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

# Hop-by-hop (RFC 9110 §7.6.1) plus the two the relay sets itself (host, content-length).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
    }
)


def parse_args(description: str) -> argparse.Namespace:
    """Parse ``--port`` and ``--upstream``; adds ``upstream_host`` and ``upstream_port``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT of the upstream")
    args = parser.parse_args()
    parts = urlsplit(args.upstream)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        parser.error(f"--upstream must be http://HOST:PORT, got {args.upstream!r}")
    args.upstream = args.upstream.rstrip("/")
    args.upstream_host = parts.hostname
    args.upstream_port = parts.port
    return args
