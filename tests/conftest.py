"""Fixtures every test folder may use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster import redis_server


@pytest.fixture
def shared_redis() -> Iterator[str]:
    """The URL of a private ``redis-server`` for this test (stopped after it)."""
    with redis_server() as url:
        yield url
