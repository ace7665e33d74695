"""Generate the key table of docs/config.md from the config model and config.example.toml.

One source per fact: the **type and default** of a key come from the typed config model
(``streamhop.sidecar.config.model``: the dataclasses, their ``Literal`` choices and defaults), its
**description** from the comment above it in config.example.toml (the file a user copies). The
table goes between the markers ``<!-- keys:begin -->`` and ``<!-- keys:end -->`` of
docs/config.md.

Usage::

    python scripts/config_docs.py --write   # rewrite the table
    python scripts/config_docs.py --check   # exit 1 when docs/config.md is stale

Raises (exit 1 with the reason) when a model field has no commented entry in
config.example.toml, or the example's value is not the model's default (a commented-out
``# key = value`` is taken as documenting an optional key with no default).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
EXAMPLE: Final = ROOT / "config.example.toml"
DOC: Final = ROOT / "docs" / "config.md"
BEGIN: Final = "<!-- keys:begin -->"
END: Final = "<!-- keys:end -->"
_KEY_LINE: Final = re.compile(r"^#?\s*([a-z_]+)\s*=\s*(.*)$")
ILLUSTRATED: Final = frozenset({"metrics.models"})
"""Keys whose value in config.example.toml shows a use rather than the default."""


def _sections() -> list[tuple[str, type[Any]]]:
    from streamhop.sidecar.config import model

    return [
        ("server", model.ServerConfig),
        ("routes", model.RouteConfig),
        ("rechunk", model.RechunkConfig),
        ("backpressure", model.BackpressureConfig),
        ("resume", model.ResumeConfig),
        ("tracing", model.TracingConfig),
        ("metrics", model.MetricsConfig),
        ("record", model.RecordConfig),
    ]


def example_entries() -> dict[tuple[str, str], tuple[str, str, bool]]:
    """``(section, key) -> (description, value text, commented out)`` from the example."""
    entries: dict[tuple[str, str], tuple[str, str, bool]] = {}
    section = ""
    comment: list[str] = []  # the block above the keys that follow it (they share it)
    after_key = False
    for raw in EXAMPLE.read_text().splitlines():
        line = raw.strip()
        header = re.match(r"^\[\[?([a-z_.]+)\]\]?$", line)
        if header:
            section = header.group(1)
            comment, after_key = [], False
            continue
        match = _KEY_LINE.match(line)
        if match and section and section != "routes.headers":
            key, value = match.group(1), match.group(2)
            if (section, key) not in entries:
                entries[(section, key)] = (" ".join(comment), value, line.startswith("#"))
            after_key = True
            continue
        if line.startswith("#"):
            if after_key:
                comment, after_key = [], False
            text = line.lstrip("#").strip()
            if text:
                comment.append(text)
        elif not line:
            comment, after_key = [], False
    return entries


def _type_text(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Literal:
        return " \\| ".join(f'`"{a}"`' for a in args)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_text(a) for a in args if a is not type(None)) + " (optional)"
    if origin is tuple:
        return f"array of {_type_text(args[0])}"
    if origin is not None and "Mapping" in str(origin):
        return "table of strings"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(hint, str(hint))


def _default_text(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, dict):
        return "`{}`"
    return f"`{value}`"


def _same_value(example: str, default: Any) -> bool:
    try:
        parsed = tomllib.loads(f"v = {example}")["v"]
    except tomllib.TOMLDecodeError:
        return False
    if isinstance(default, tuple):
        return list(default) == parsed
    if isinstance(default, dict):
        return parsed == default
    return bool(parsed == default)


def table() -> str:
    """The Markdown table; raises ``SystemExit`` naming the first inconsistency."""
    entries = example_entries()
    rows = ["| key | type | default | what it does |", "| --- | --- | --- | --- |"]
    problems: list[str] = []
    for section, cls in _sections():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            name = f"{section}.{field.name}" if section != "routes" else f"routes[].{field.name}"
            entry = entries.get((section, field.name))
            if entry is None:
                if field.name != "headers":
                    problems.append(f"{name}: not in config.example.toml")
                description = "Headers added to every upstream request of this route."
            else:
                description, value, commented = entry
                default = (
                    field.default
                    if field.default is not dataclasses.MISSING
                    else field.default_factory()  # type: ignore[misc]
                    if field.default_factory is not dataclasses.MISSING
                    else None
                )
                if (
                    not commented
                    and field.default is not dataclasses.MISSING
                    and name not in ILLUSTRATED
                    and not _same_value(value, default)
                ):
                    problems.append(
                        f"{name}: config.example.toml says {value}, the default is {default!r}"
                    )
            escaped = description.replace("|", "\\|")
            rows.append(
                f"| `{name}` | {_type_text(hints[field.name])} | {_default_text(field)} | "
                f"{escaped} |"
            )
    if problems:
        raise SystemExit("config docs: " + "; ".join(problems))
    return "\n".join(rows)


def render(doc: str) -> str:
    """``doc`` with the generated table between the markers."""
    begin, end = doc.index(BEGIN), doc.index(END)
    return doc[: begin + len(BEGIN)] + "\n" + table() + "\n" + doc[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite docs/config.md's table")
    mode.add_argument("--check", action="store_true", help="exit 1 when it is stale")
    args = parser.parse_args(argv)
    current = DOC.read_text()
    wanted = render(current)
    if args.write:
        DOC.write_text(wanted)
        return 0
    if current != wanted:
        print("docs/config.md is stale: run python scripts/config_docs.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
