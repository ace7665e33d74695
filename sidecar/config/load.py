"""Reading and validating ``streamhop serve --config``: TOML in, :class:`~.model.Config` out.

Loading never half-succeeds: an unknown key, a wrong type or an impossible value raises
:class:`~streamhop.middleware.errors.ConfigError` naming the dotted key (``routes[1].upstream``)
and what was expected, before any socket is opened. ``${NAME}`` in route headers and proxies,
``resume.binding_key`` and ``resume.redis_url`` is replaced by the environment variable ``NAME``.

This module reads the file and puts the tables together; each table is validated by its own
module (:mod:`.server`, :mod:`.routes`, :mod:`.streaming`, :mod:`.resume`, :mod:`.telemetry`,
:mod:`.record`), from the value readers of :mod:`.readers` and the URL checks of
:mod:`.urls`. Checks that span two tables (a ``detach`` or ``grace`` route needs ``[resume]``,
``[record] routes`` name routes, several workers need a shared resume store) live here.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config.model import Config, RouteConfig
from streamhop.sidecar.config.readers import no_unknown, table
from streamhop.sidecar.config.record import check_record_routes, record_config
from streamhop.sidecar.config.resume import resume_config
from streamhop.sidecar.config.routes import routes_config
from streamhop.sidecar.config.server import server_config
from streamhop.sidecar.config.streaming import backpressure_config, rechunk_config
from streamhop.sidecar.config.telemetry import metrics_config, tracing_config
from streamhop.sidecar.config.urls import base_url
from streamhop.sidecar.config.workers import check_workers


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file.

    Args:
        path: the file.
        environ: where ``${NAME}`` in route headers is looked up (default ``os.environ``).

    Raises:
        ConfigError: unreadable file, TOML syntax error, or an invalid key (named in the error).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("<file>", f"{path} is not valid TOML: {exc}") from exc
    return config_from_dict(data, environ)


def config_from_dict(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed config mapping (the TOML document's top-level table).

    Raises:
        ConfigError: the first invalid key, with its dotted name and the reason.
    """
    env = os.environ if environ is None else environ
    no_unknown(
        "",
        data,
        {"server", "routes", "rechunk", "backpressure", "resume", "tracing", "metrics", "record"},
    )
    server = server_config(table(data, "server"))
    routes = routes_config(data.get("routes", []), env)
    resume = resume_config(table(data, "resume"), env)
    record = record_config(table(data, "record"))
    check_record_routes(record, routes)
    check_workers(server, resume)
    for i, route in enumerate(routes):
        if route.on_disconnect != "cancel" and not resume.enabled:
            raise ConfigError(
                f"routes[{i}].on_disconnect",
                f"{route.on_disconnect!r} keeps generating into the resume log: "
                "set [resume] enabled = true",
            )
    return Config(
        routes=routes,
        server=server,
        rechunk=rechunk_config(table(data, "rechunk")),
        backpressure=backpressure_config(table(data, "backpressure")),
        resume=resume,
        tracing=tracing_config(table(data, "tracing")),
        metrics=metrics_config(table(data, "metrics")),
        record=record,
    )


def route_for_upstream(upstream: str) -> RouteConfig:
    """The single route ``--upstream URL`` stands for (``prefix = "/"``).

    Raises:
        ConfigError: ``upstream`` is not an http(s) URL.
    """
    return RouteConfig(prefix="/", upstream=base_url("--upstream", upstream))
