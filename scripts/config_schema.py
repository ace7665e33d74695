"""Generate the ``config`` part of the Helm chart's ``values.schema.json`` from the config model.

The chart's ``config`` value is streamhop's TOML as YAML, so which keys it accepts, and their
types, defaults and closed value sets, are facts of :mod:`streamhop.sidecar.config.model`: they are
read here from the dataclasses (``dataclasses.fields`` and ``typing.get_type_hints``), never
copied by hand. What the model cannot say is in :data:`OVERLAY`, written by hand and merged over
the generated part:

* bounds and patterns (the loader's ``minimum=`` arguments, URL and header-name shapes);
* the chart's own rules: keys the chart renders itself (``[server] listen`` and ``admin_listen``
  from ``mode`` and ``ports``, ``tls_cert_file`` and ``tls_key_file`` from ``tls``, ``[record]
  dir`` from ``record``) are left out,
  so ``additionalProperties: false`` refuses them; proxy URLs may carry no credentials (the
  ConfigMap is no place for them); ``required`` keys the templates read.

Every other key may be ``null``: the chart leaves a null key out of the TOML, so streamhop's
built-in default applies. An overlay entry for a key the model does not have, or an ``enum``
that disagrees with the model's ``Literal``, is an error: the overlay cannot drift silently.

Deliberately hand-written rather than pydantic's ``TypeAdapter(...).json_schema()``: the output
must be byte-stable across library upgrades (CI compares it with the checked-in file), and the
model uses only a handful of type shapes.

Usage::

    .venv/bin/python scripts/config_schema.py --write   # rewrite the chart's values.schema.json
    .venv/bin/python scripts/config_schema.py --check   # exit 1 when the checked-in file is stale
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from streamhop.sidecar.config import model

ROOT: Final = Path(__file__).resolve().parents[1]
SCHEMA_PATH: Final = ROOT / "charts" / "streamhop" / "values.schema.json"

TABLES: Final[Mapping[str, type]] = {
    "server": model.ServerConfig,
    "routes": model.RouteConfig,
    "rechunk": model.RechunkConfig,
    "backpressure": model.BackpressureConfig,
    "resume": model.ResumeConfig,
    "tracing": model.TracingConfig,
    "metrics": model.MetricsConfig,
    "record": model.RecordConfig,
}
"""The TOML tables, in the order of config.example.toml; ``routes`` is an array of tables."""

_ORIGIN: Final = {"type": "string", "pattern": "^https?://[^/]+$"}
_PROXY_URL: Final = "^$|^http://[^@/\\s]+/?$"
_ABSOLUTE_PATH: Final = {"type": "string", "pattern": "^/"}
_POSITIVE: Final = {"exclusiveMinimum": 0}

OVERLAY: Final[Mapping[str, Mapping[str, Any]]] = {
    "server": {
        "chart_owned": ["listen", "admin_listen", "tls_cert_file", "tls_key_file"],
        "required": ["drain_timeout_s", "max_streams"],
        "description": "[server]; listen and admin_listen are set by the chart from mode and "
        "ports, tls_cert_file and tls_key_file from tls.",
        "fields": {
            "drain_timeout_s": {"minimum": 0},
            "max_streams": {"minimum": 1},
            "max_request_bytes": {"minimum": 1},
            "allowed_origins": {"items": _ORIGIN},
            "max_header_bytes": {"minimum": 1024},
            "max_headers": {"minimum": 8},
            "header_timeout_s": {"minimum": 0.1},
            "body_timeout_s": {"minimum": 0.1},
            "max_websockets": {"minimum": 1},
            # An integer, or "auto" (the loader resolves it from the CPUs this process may use;
            # the model holds the result): "minimum" binds numbers, "pattern" strings.
            "workers": {"minimum": 1, "pattern": "^auto$", "also_type": "string"},
            "websocket_idle_timeout_s": {"minimum": 0.1},
        },
    },
    "routes": {
        "required": ["prefix", "upstream"],
        "array": {"minItems": 1},
        "extra": {"dependencies": {"tls_client_key": ["tls_client_cert"]}},
        "fields": {
            "prefix": {"pattern": "^/"},
            "upstream": {"pattern": "^https?://[^\\s]+$"},
            "timeout_s": _POSITIVE,
            "connect_timeout_s": _POSITIVE,
            "retries": {"minimum": 0},
            "read_timeout_s": _POSITIVE,
            "keepalive_interval_s": _POSITIVE,
            "allowed_origins": {"items": _ORIGIN},
            "methods": {
                "minItems": 1,
                "items": {
                    "type": "string",
                    "pattern": "^[A-Z][A-Z0-9_-]*$",
                    "not": {"enum": sorted(model.NEVER_FORWARDED_METHODS, reverse=True)},
                },
            },
            "proxy": {
                "pattern": _PROXY_URL,
                "description": "http:// only (the tunnel to an https:// provider is TLS end to "
                'end); "" = go direct even when HTTPS_PROXY is set. No credentials: the '
                "ConfigMap is no place for them (egressProxy.existingSecret).",
            },
            "tls_ca_file": _ABSOLUTE_PATH,
            "tls_client_cert": _ABSOLUTE_PATH,
            "tls_client_key": _ABSOLUTE_PATH,
            "tls_server_name": {"pattern": "^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$"},
        },
    },
    "rechunk": {
        "fields": {
            "flush_interval_ms": {"minimum": 0},
            "max_flush_bytes": {"minimum": 1},
            "max_event_bytes": {"minimum": 64},
            "max_boundary_wait_ms": {"minimum": 0},
        },
    },
    "backpressure": {
        "fields": {
            "max_pending_bytes": {"minimum": 1024},
            "stall_timeout_s": _POSITIVE,
        },
    },
    "resume": {
        "required": ["enabled", "store"],
        "fields": {
            "redis_url": {"pattern": "^$|^(redis|rediss|unix)://"},
            "window_s": {"minimum": 1},
            "max_streams": {"minimum": 1},
            "max_stream_bytes": {"minimum": 1024},
            "max_total_bytes": {"minimum": 1024},
            "binding_headers": {
                "minItems": 1,
                "items": {"type": "string", "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"},
            },
            "handoff_jitter_ms": {"minimum": 0},
        },
    },
    "tracing": {
        "fields": {
            "otlp_endpoint": {"pattern": "^$|^https?://"},
        },
    },
    "metrics": {
        "fields": {
            "burst_gap_ms": {"minimum": 10},
            "burst_events": {"minimum": 2},
        },
    },
    "record": {
        "chart_owned": ["dir"],
        "description": "[record]; dir is set by the chart to the volume of record.enabled.",
        "fields": {
            "sample": {"minimum": 0, "maximum": 1},
            "max_bytes": {"minimum": 1024},
            "max_recording_bytes": {"minimum": 1024},
            "routes": {"items": {"type": "string", "pattern": "^/"}},
        },
    },
}
"""What the model cannot say, per table: ``fields`` (keywords merged into a key's schema),
``chart_owned`` (keys the chart renders itself: refused in values), ``required``, ``description``,
``extra`` (keywords of the table's schema) and ``array`` (of the ``[[routes]]`` array's)."""

_OVERLAY_TABLE_KEYS: Final = frozenset(
    ("fields", "chart_owned", "required", "description", "extra", "array")
)


class SchemaError(Exception):
    """The model has a type this generator cannot express, or the overlay disagrees with it."""


def type_schema(tp: Any, where: str) -> dict[str, Any]:
    """The JSON Schema of one annotated type (no ``null``: see :func:`field_schema`).

    Args:
        tp: a resolved annotation (``typing.get_type_hints``).
        where: the dotted key, for the error.

    Raises:
        SchemaError: a type shape the model does not use yet.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}  # TOML and YAML integers are numbers too
    if tp is str:
        return {"type": "string"}
    if origin is typing.Literal:
        if not all(isinstance(a, str) for a in args):
            raise SchemaError(f"{where}: only Literal of strings is supported, got {tp!r}")
        return {"type": "string", "enum": list(args)}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": type_schema(args[0], f"{where}[]")}
    if origin in (Mapping, dict) and args and args[0] is str:
        return {"type": "object", "additionalProperties": type_schema(args[1], f"{where}.*")}
    raise SchemaError(f"{where}: no JSON Schema for the type {tp!r}; teach type_schema() it")


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(typing.get_args(tp)):
            return rest[0], True
    return tp, False


def _json_default(field: dataclasses.Field[Any]) -> tuple[bool, Any]:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return False, None
    if isinstance(value, tuple):
        value = list(value)
    elif isinstance(value, Mapping):
        value = dict(value)
    return True, value


def _with_null(schema: dict[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    if "enum" in out:
        out["enum"] = [*schema["enum"], None]
    return out


def field_schema(
    field: dataclasses.Field[Any], tp: Any, where: str, overlay: Mapping[str, Any], required: bool
) -> dict[str, Any]:
    """One key: its type from the model, ``null`` unless required, the overlay merged in.

    Raises:
        SchemaError: the overlay sets a keyword the model already decides, differently.
    """
    inner, _ = _split_optional(tp)
    schema = type_schema(inner, where)
    overlay = dict(overlay)
    also_type = overlay.pop("also_type", None)  # a spelling the loader turns into the model's type
    for keyword, value in overlay.items():
        if keyword in schema and schema[keyword] != value and keyword != "items":
            raise SchemaError(
                f"{where}: the overlay says {keyword}={value!r}, the model {schema[keyword]!r}"
            )
        if keyword == "items" and schema.get("items", {}).get("type") != value.get("type"):
            raise SchemaError(f"{where}: the overlay's items are not the model's {schema['items']}")
        schema[keyword] = value
    if not required:
        # The chart leaves a null key out of the TOML: streamhop's default applies.
        schema = _with_null(schema)
    if also_type is not None:
        types_ = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        schema["type"] = [types_[0], also_type, *types_[1:]]
    has_default, default = _json_default(field)
    if has_default:
        schema["default"] = default
    return schema


def table_schema(name: str, cls: type) -> dict[str, Any]:
    """The schema of one TOML table (for ``routes``: the array of tables).

    Raises:
        SchemaError: the overlay names a key the model does not have, or disagrees with it.
    """
    overlay = OVERLAY.get(name, {})
    unknown_table_keys = set(overlay) - _OVERLAY_TABLE_KEYS
    if unknown_table_keys:
        raise SchemaError(f"OVERLAY[{name!r}] has unknown entries {sorted(unknown_table_keys)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    field_overlay: Mapping[str, Mapping[str, Any]] = overlay.get("fields", {})
    chart_owned: list[str] = overlay.get("chart_owned", [])
    required: list[str] = overlay.get("required", [])
    for key in [*field_overlay, *chart_owned, *required]:
        if key not in fields:
            raise SchemaError(f"OVERLAY names {name}.{key}, which {cls.__name__} does not have")
    properties = {
        key: field_schema(
            field, hints[key], f"{name}.{key}", field_overlay.get(key, {}), key in required
        )
        for key, field in fields.items()
        if key not in chart_owned
    }
    table: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        table["required"] = list(required)
    table.update(overlay.get("extra", {}))
    if "description" in overlay:
        table["description"] = overlay["description"]
    if name == "routes":
        return {"type": "array", **overlay.get("array", {}), "items": table}
    return table


def config_schema() -> dict[str, Any]:
    """The schema of the chart's ``config`` value, from the model and the overlay."""
    return {
        "$comment": "Generated from streamhop.sidecar.config.model by scripts/config_schema.py; "
        "do not edit by hand: change the model or the script's OVERLAY, then run "
        "`.venv/bin/python scripts/config_schema.py --write`.",
        "type": "object",
        "additionalProperties": False,
        "properties": {name: table_schema(name, cls) for name, cls in TABLES.items()},
        "required": ["server", "routes", "resume"],
    }


def render(current: Mapping[str, Any]) -> str:
    """The whole values schema: ``current`` with its ``config`` part regenerated, as text."""
    schema = dict(current)
    properties = dict(schema["properties"])
    properties["config"] = config_schema()
    schema["properties"] = properties
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``--write`` rewrites the schema file; ``--check`` exits 1 when it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite the schema file")
    action.add_argument("--check", action="store_true", help="exit 1 when it is stale")
    parser.add_argument("--schema", type=Path, default=SCHEMA_PATH, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    path: Path = args.schema
    text = path.read_text(encoding="utf-8")
    expected = render(json.loads(text))
    if args.write:
        if text != expected:
            path.write_text(expected, encoding="utf-8")
            print(f"wrote {path}")
        return 0
    if text != expected:
        print(
            f"{path} is stale: its config part differs from the config model; run "
            "`.venv/bin/python scripts/config_schema.py --write` and commit the result",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
