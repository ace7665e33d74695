"""Which build of the stream engine runs: compiled with mypyc, or pure Python.

A wheel (``pip install .``, the container image) has the engine's sans-IO modules (the SSE
codec, the coalescer, the per-format merge rules, the pump and its metrics; the list is
``ENGINE`` in ``setup.py``) compiled with mypyc, which turns ``mypy --strict`` code into C
extensions; their ``.py`` sources stay beside them and are the same program. An editable install
(``pip install -e .``), a wheel built with ``STREAMHOP_PURE_PYTHON=1``, or one built where no C
compiler was found runs everything from source. :func:`engine_build` says which one is running;
``streamhop serve`` logs it at start-up.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from typing import Literal


def engine_build() -> Literal["compiled", "pure-python"]:
    """``"compiled"`` when the engine's modules run as mypyc extensions, else
    ``"pure-python"`` (an editable install, or a pure wheel)."""
    from streamhop.middleware.sse import decoder

    origin = decoder.__file__ or ""
    return "compiled" if origin.endswith(tuple(EXTENSION_SUFFIXES)) else "pure-python"


__all__ = ["engine_build"]
