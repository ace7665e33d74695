"""The ``[server]`` table: listeners, limits, timeouts and the listener's TLS files, validated.

The listener's certificate and key are loaded once here, so a wrong path or a key that does not
match fails at start with ``server.tls_cert_file``, not at the first handshake.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config.model import ServerConfig, parse_hostport
from streamhop.sidecar.config.readers import (
    no_unknown,
    optional_str,
    read_bool,
    read_int,
    read_num,
    read_str,
)
from streamhop.sidecar.config.urls import hosts, origins
from streamhop.sidecar.config.workers import parse_workers


def server_config(t: Mapping[str, Any]) -> ServerConfig:
    """``[server]`` as a :class:`~.model.ServerConfig` (absent keys: the defaults).

    Args:
        t: the table (empty when the file has none).

    Raises:
        ConfigError: an unknown key, a wrong type, a value below its minimum, a listen address
            that is not ``host:port``, or TLS files that are not a loadable pair.
    """
    no_unknown("server", t, set(ServerConfig.__dataclass_fields__))
    d = ServerConfig()
    listen = read_str(t, "server", "listen", d.listen)
    admin = read_str(t, "server", "admin_listen", d.admin_listen)
    parse_hostport("server.listen", listen)
    parse_hostport("server.admin_listen", admin)
    return ServerConfig(
        listen=listen,
        admin_listen=admin,
        drain_timeout_s=read_num(t, "server", "drain_timeout_s", d.drain_timeout_s, minimum=0),
        max_streams=read_int(t, "server", "max_streams", d.max_streams, minimum=1),
        max_request_bytes=read_int(
            t, "server", "max_request_bytes", d.max_request_bytes, minimum=1
        ),
        allowed_origins=origins("server.allowed_origins", t.get("allowed_origins", [])),
        allowed_hosts=hosts("server.allowed_hosts", t.get("allowed_hosts", [])),
        max_header_bytes=read_int(
            t, "server", "max_header_bytes", d.max_header_bytes, minimum=1024
        ),
        max_headers=read_int(t, "server", "max_headers", d.max_headers, minimum=8),
        header_timeout_s=read_num(t, "server", "header_timeout_s", d.header_timeout_s, minimum=0.1),
        body_timeout_s=read_num(t, "server", "body_timeout_s", d.body_timeout_s, minimum=0.1),
        max_websockets=read_int(t, "server", "max_websockets", d.max_websockets, minimum=1),
        websocket_idle_timeout_s=read_num(
            t, "server", "websocket_idle_timeout_s", d.websocket_idle_timeout_s, minimum=0.1
        ),
        trust_env=read_bool(t, "server", "trust_env", d.trust_env),
        workers=parse_workers("server.workers", t.get("workers", d.workers)),
        **_listener_tls(t),
    )


def _listener_tls(t: Mapping[str, Any]) -> dict[str, str | None]:
    """``[server] tls_cert_file`` / ``tls_key_file``: both or neither, and loadable as a
    server certificate and its key."""
    cert = optional_str(t, "server", "tls_cert_file") or None
    key = optional_str(t, "server", "tls_key_file") or None
    if (cert is None) != (key is None):
        missing = "tls_key_file" if key is None else "tls_cert_file"
        raise ConfigError(f"server.{missing}", "set both tls_cert_file and tls_key_file, or none")
    if cert is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "server.tls_cert_file", f"cannot load {cert!r} with key {key!r}: {exc}"
            ) from None
    return {"tls_cert_file": cert, "tls_key_file": key}
