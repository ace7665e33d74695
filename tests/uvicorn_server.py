"""Kept for tests that still import :class:`BackgroundUvicorn` from here; it lives in
:mod:`tests.support` with the other shared helpers."""

from __future__ import annotations

from tests.support import BackgroundUvicorn

__all__ = ["BackgroundUvicorn"]
