"""``scripts/config_schema.py``: the ``config`` part of the chart's values schema is generated
from the config model, the checked-in file is what the generator produces (CI fails when it is
stale), and the bounds the overlay adds are the loader's own."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pytest

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config import config_from_dict
from tests.kubernetes.chart import CHART, ROOT

SCRIPT = ROOT / "scripts" / "config_schema.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_schema", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and typing look modules up by name
    spec.loader.exec_module(module)
    return module


config_schema = _load_script()


def checked_in() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def test_the_checked_in_schema_is_what_the_generator_writes() -> None:
    """Fails when the config model changed and nobody ran ``config_schema.py --write``."""
    text = (CHART / "values.schema.json").read_text(encoding="utf-8")
    assert text == config_schema.render(json.loads(text)), (
        "charts/streamhop/values.schema.json is stale: run "
        "`.venv/bin/python scripts/config_schema.py --write` and commit it"
    )


def test_check_exits_1_on_a_stale_file_and_write_fixes_it(tmp_path: Path) -> None:
    stale = checked_in()
    del stale["properties"]["config"]["properties"]["rechunk"]["properties"]["flush_boundary"]
    path = tmp_path / "values.schema.json"
    path.write_text(json.dumps(stale, indent=2) + "\n")
    run = [sys.executable, str(SCRIPT), "--schema", str(path)]
    check = subprocess.run([*run, "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and "stale" in check.stderr
    assert subprocess.run([*run, "--write"], timeout=60).returncode == 0
    assert subprocess.run([*run, "--check"], timeout=60).returncode == 0
    assert json.loads(path.read_text()) == checked_in()


def test_every_field_of_the_model_is_a_key_of_the_schema() -> None:
    """Each dataclass field is offered, except the keys the chart renders itself."""
    tables = checked_in()["properties"]["config"]["properties"]
    assert list(tables) == list(config_schema.TABLES)
    for name, cls in config_schema.TABLES.items():
        table = tables[name]["items"] if name == "routes" else tables[name]
        fields = [f.name for f in dataclasses.fields(cls)]
        owned = config_schema.OVERLAY.get(name, {}).get("chart_owned", [])
        assert list(table["properties"]) == [f for f in fields if f not in owned], name
        assert table["additionalProperties"] is False


def test_the_issue_24_keys_are_there_with_their_types() -> None:
    tables = checked_in()["properties"]["config"]["properties"]
    rechunk = tables["rechunk"]["properties"]
    assert rechunk["flush_boundary"]["enum"] == ["none", "word", "sentence", "line", None]
    assert rechunk["max_boundary_wait_ms"]["type"] == ["number", "null"]
    assert rechunk["coalesce_reads"]["type"] == ["boolean", "null"]
    assert tables["resume"]["properties"]["handoff_jitter_ms"]["minimum"] == 0
    assert tables["tracing"]["properties"]["export_metrics"]["default"] is False
    route = tables["routes"]["items"]["properties"]
    assert route["client_on_disconnect"]["type"] == ["boolean", "null"]
    assert route["headers"]["additionalProperties"] == {"type": "string"}
    assert route["timeout_s"]["type"] == ["number", "null"]
    assert route["methods"]["items"]["not"] == {"enum": ["TRACE", "CONNECT"]}


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (bool, {"type": "boolean"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (str, {"type": "string"}),
        (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
        (tuple[str, ...], {"type": "array", "items": {"type": "string"}}),
        (Mapping[str, str], {"type": "object", "additionalProperties": {"type": "string"}}),
    ],
)
def test_type_schema(annotation: Any, expected: dict[str, Any]) -> None:
    assert config_schema.type_schema(annotation, "t.k") == expected


def test_a_type_it_cannot_express_is_an_error_naming_the_key() -> None:
    with pytest.raises(config_schema.SchemaError, match=r"t\.k: no JSON Schema"):
        config_schema.type_schema(set[int], "t.k")


def test_an_overlay_that_drifts_from_the_model_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    overlay = dict(config_schema.OVERLAY)
    overlay["rechunk"] = {"fields": {"flush_intervall_ms": {"minimum": 0}}}
    monkeypatch.setattr(config_schema, "OVERLAY", overlay)
    with pytest.raises(config_schema.SchemaError, match=r"rechunk\.flush_intervall_ms"):
        config_schema.config_schema()
    overlay["rechunk"] = {"fields": {"mode": {"enum": ["coalesce"]}}}
    with pytest.raises(config_schema.SchemaError, match=r"rechunk\.mode: the overlay says enum"):
        config_schema.config_schema()


def _bounds() -> list[tuple[str, str, str, float]]:
    """(table, key, keyword, bound) of every numeric bound the schema sets."""
    out = []
    tables = checked_in()["properties"]["config"]["properties"]
    for name, table in tables.items():
        props = (table["items"] if name == "routes" else table)["properties"]
        for key, schema in props.items():
            for keyword in ("minimum", "exclusiveMinimum"):
                if keyword in schema:
                    out.append((name, key, keyword, schema[keyword]))
    return out


def _config_with(table: str, key: str, value: float) -> dict[str, Any]:
    route: dict[str, Any] = {"prefix": "/", "upstream": "https://api.example.com"}
    if table == "routes":
        return {"routes": [{**route, key: value}]}
    return {"routes": [route], table: {key: value}}


@pytest.mark.parametrize(("table", "key", "keyword", "bound"), _bounds())
def test_the_schema_bounds_are_the_loaders(
    table: str, key: str, keyword: str, bound: float
) -> None:
    """What the schema lets through at its bound, streamhop accepts; just past it, streamhop
    refuses too: the hand-written bounds of the overlay cannot drift from the loader's."""
    integer = "int" in str(
        {f.name: f.type for f in dataclasses.fields(config_schema.TABLES[table])}[key]
    )
    if keyword == "minimum":
        at, below = bound, bound - (1 if integer else 0.001)
    else:  # exclusiveMinimum: the bound itself is refused
        at, below = bound + (1 if integer else 0.001), bound
    config_from_dict(_config_with(table, key, at), {})
    with pytest.raises(ConfigError, match=key):
        config_from_dict(_config_with(table, key, below), {})
