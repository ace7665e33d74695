"""Sidecar configuration: the TOML file of ``streamhop serve --config``, validated at start.

:mod:`.model` holds the values (one dataclass per table, defaults included); :mod:`.load` reads
and validates a file into them. Every key is documented in ``config.example.toml`` at the
repository root and in ``docs/config.md``.
"""

from __future__ import annotations

from streamhop.sidecar.config.load import config_from_dict, load_config, route_for_upstream
from streamhop.sidecar.config.model import (
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_BINDING_HEADERS,
    DEFAULT_LISTEN,
    LOOPBACK_HOSTS,
    BackpressureConfig,
    Config,
    MetricsConfig,
    RechunkConfig,
    ResumeConfig,
    RouteConfig,
    ServerConfig,
    TracingConfig,
    effective_allowed_hosts,
    parse_hostport,
    redact_url,
)

__all__ = [
    "DEFAULT_ADMIN_LISTEN",
    "DEFAULT_BINDING_HEADERS",
    "DEFAULT_LISTEN",
    "LOOPBACK_HOSTS",
    "BackpressureConfig",
    "Config",
    "MetricsConfig",
    "RechunkConfig",
    "ResumeConfig",
    "RouteConfig",
    "ServerConfig",
    "TracingConfig",
    "config_from_dict",
    "effective_allowed_hosts",
    "load_config",
    "parse_hostport",
    "redact_url",
    "route_for_upstream",
]
