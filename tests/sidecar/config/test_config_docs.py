"""docs/config.md's key table is generated from the config model and config.example.toml
(scripts/config_docs.py): stale docs, a key missing from the example, or an example value
that is not the default fail here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[3]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_docs", ROOT / "scripts/config_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["config_docs"] = module
    spec.loader.exec_module(module)
    return module


def test_the_key_table_of_docs_config_md_is_current() -> None:
    script = load_script()
    assert script.main(["--check"]) == 0, "run: python scripts/config_docs.py --write"


def test_every_model_field_is_in_the_table() -> None:
    script = load_script()
    text = (ROOT / "docs/config.md").read_text()
    for section, cls in script._sections():
        for field in cls.__dataclass_fields__:
            name = f"routes[].{field}" if section == "routes" else f"{section}.{field}"
            assert f"| `{name}` |" in text, name
