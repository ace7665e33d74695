"""The tables of what the sidecar reports about itself: ``[tracing]`` (OTLP export) and
``[metrics]`` (model labels and burst detection)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config.model import MetricsConfig, TracingConfig
from streamhop.sidecar.config.readers import no_unknown, read_bool, read_int, read_num, read_str
from streamhop.sidecar.config.urls import base_url


def tracing_config(t: Mapping[str, Any]) -> TracingConfig:
    """``[tracing]`` as a :class:`~.model.TracingConfig` (absent keys: the defaults).

    Raises:
        ConfigError: an unknown key, a wrong type, an ``otlp_endpoint`` that is not an http(s)
            base URL, or ``export_metrics`` without an ``otlp_endpoint``.
    """
    no_unknown("tracing", t, set(TracingConfig.__dataclass_fields__))
    d = TracingConfig()
    endpoint = t.get("otlp_endpoint")
    if endpoint is not None:
        endpoint = base_url("tracing.otlp_endpoint", read_str(t, "tracing", "otlp_endpoint", ""))
    export_metrics = read_bool(t, "tracing", "export_metrics", d.export_metrics)
    if export_metrics and endpoint is None:
        raise ConfigError(
            "tracing.export_metrics", "needs tracing.otlp_endpoint (where the metrics go)"
        )
    return TracingConfig(
        otlp_endpoint=endpoint,
        service_name=read_str(t, "tracing", "service_name", d.service_name),
        export_metrics=export_metrics,
    )


def metrics_config(t: Mapping[str, Any]) -> MetricsConfig:
    """``[metrics]`` as a :class:`~.model.MetricsConfig` (absent keys: the defaults).

    Raises:
        ConfigError: an unknown key, ``models`` that is not an array of strings, a
            ``burst_gap_ms`` below 10 or ``burst_events`` below 2.
    """
    no_unknown("metrics", t, set(MetricsConfig.__dataclass_fields__))
    models = t.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError("metrics.models", "expected an array of model name strings")
    d = MetricsConfig()
    return MetricsConfig(
        models=tuple(models),
        # Gaps at or below the 1 ms window in which a burst's events arrive would make every
        # fast stream a series of bursts.
        burst_gap_ms=read_num(t, "metrics", "burst_gap_ms", d.burst_gap_ms, minimum=10),
        # A single event after a gap is a slow provider, not a buffering hop.
        burst_events=read_int(t, "metrics", "burst_events", d.burst_events, minimum=2),
    )
