"""Which build of the stream engine runs: compiled with mypyc, or pure Python.

``pip install`` compiles the engine's sans-IO modules (the SSE codec, the coalescer and the
per-format merge rules; the list is ``ENGINE`` in ``setup.py``) with mypyc, which turns
``mypy --strict`` code into a C extension per module; their ``.py`` sources stay beside them and
are the same program. Where no C compiler is found, or with ``STREAMHOP_PURE_PYTHON=1`` set at
install time, nothing is compiled and everything runs from source.

``STREAMHOP_PURE_PYTHON=1`` set at *run* time (before the first ``import streamhop.middleware``)
loads every ``streamhop.middleware`` module from its source even where the compiled one is
installed: to rule the compiled build out when debugging, and for the test suite, which runs the
engine's tests both ways. :func:`engine_build` says which one is running; ``streamhop serve``
logs it at start-up.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import (
    EXTENSION_SUFFIXES,
    SOURCE_SUFFIXES,
    FileFinder,
    ModuleSpec,
    SourceFileLoader,
)
from types import ModuleType
from typing import Final, Literal

PURE_PYTHON_ENV: Final = "STREAMHOP_PURE_PYTHON"
"""Set to ``1`` to run the engine from its ``.py`` sources (at install time: build none)."""

_PACKAGE: Final = "streamhop.middleware."


class SourcesOnly(MetaPathFinder):
    """Finds ``streamhop.middleware`` modules among ``.py`` sources only, ahead of the regular
    path finder, which prefers an extension module of the same name (PEP 451 finders)."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if path is None or not fullname.startswith(_PACKAGE):
            return None
        for entry in path:
            spec = FileFinder(entry, (SourceFileLoader, SOURCE_SUFFIXES)).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def pure_python_requested() -> bool:
    """True when ``STREAMHOP_PURE_PYTHON`` is set to anything but empty or ``0``."""
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def prefer_sources_if_requested() -> None:
    """With ``STREAMHOP_PURE_PYTHON`` set, put :class:`SourcesOnly` first on ``sys.meta_path``
    (once). Called by ``streamhop.middleware`` on import, before any engine module loads."""
    if pure_python_requested() and not any(isinstance(f, SourcesOnly) for f in sys.meta_path):
        sys.meta_path.insert(0, SourcesOnly())


def engine_build() -> Literal["compiled", "pure-python"]:
    """``"compiled"`` when the engine's modules run as mypyc extensions, else
    ``"pure-python"`` (nothing compiled at install, or ``STREAMHOP_PURE_PYTHON`` set)."""
    from streamhop.middleware.sse import decoder

    origin = decoder.__file__ or ""
    return "compiled" if origin.endswith(tuple(EXTENSION_SUFFIXES)) else "pure-python"


__all__ = [
    "PURE_PYTHON_ENV",
    "SourcesOnly",
    "engine_build",
    "prefer_sources_if_requested",
    "pure_python_requested",
]
