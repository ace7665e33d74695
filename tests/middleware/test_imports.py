"""Importing the sans-IO engine loads no server, framework, HTTP client or metrics library.

Checked in a fresh interpreter, whose ``sys.modules`` is the whole truth about what an import
loaded (this test process has imported them all already).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Final

import pytest

HEAVY: Final = ("starlette", "aiohttp", "uvicorn", "prometheus_client")
"""Top-level packages the engine must not load."""

ENGINE_MODULES: Final = (
    "streamhop.middleware",
    "streamhop.middleware.sse.decoder",
    "streamhop.middleware.sse.encoder",
    "streamhop.middleware.sse.events",
)


def loaded_after(statement: str) -> set[str]:
    """The top-level package names in ``sys.modules`` after running ``statement`` in a fresh
    interpreter (``-I``: no user site, no environment, no script directory)."""
    script = (
        f"import sys\n{statement}\n"
        "import json\n"
        "print(json.dumps(sorted({name.partition('.')[0] for name in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    names: list[str] = json.loads(done.stdout.splitlines()[-1])
    return set(names)


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_the_engine_imports_no_server_framework_or_metrics(module: str) -> None:
    loaded = loaded_after(f"import {module}")
    assert "streamhop" in loaded  # the import did happen
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_the_check_sees_a_heavy_import() -> None:
    """The same check does see them when they are imported (it cannot pass vacuously)."""
    loaded = loaded_after("import streamhop.middleware.asgi.middleware")
    assert {"starlette", "prometheus_client"} <= loaded
