"""Sidecar configuration: the TOML file of ``streamhop serve --config``, validated at start.

:mod:`.model` holds the values (one dataclass per table, defaults included); :mod:`.load` reads
a file and validates it into them, one module per table (:mod:`.server`, :mod:`.routes`,
:mod:`.streaming`, :mod:`.resume`, :mod:`.telemetry`) over the typed readers of :mod:`.readers`
and the URL checks of :mod:`.urls`. :mod:`.route_egress` parses a route's proxy URL and builds
its TLS context (used by the loader's checks and by the upstream client alike). Every key is
documented in ``config.example.toml`` at the repository root and in ``docs/config.md``.

This package is the bottom layer of the sidecar: it imports no other ``streamhop.sidecar``
package.
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
from streamhop.sidecar.config.workers import check_workers, parse_workers

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
    "check_workers",
    "config_from_dict",
    "effective_allowed_hosts",
    "load_config",
    "parse_hostport",
    "parse_workers",
    "redact_url",
    "route_for_upstream",
]
