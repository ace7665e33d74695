"""Only a route's methods are forwarded: TRACE and CONNECT never reach the provider with the key.

Found by the round-3 review: ``TRACE`` and ``CONNECT`` were forwarded with the route's
``Authorization`` (a TRACE-echoing upstream returned it). Uses the real sidecar and recording
provider of test_security.py (route ``/x`` adds ``Authorization: Bearer <KEY>``).
"""

from __future__ import annotations

import pytest

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config import config_from_dict
from tests.sidecar.test_security import KEY, _get, _status, provider, side  # noqa: F401
from tests.support import BackgroundAiohttp, StreamhopProcess


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND"])
def test_methods_outside_the_route_list_get_405_and_reach_nothing(
    side: StreamhopProcess,  # noqa: F811
    provider: tuple[BackgroundAiohttp, object],  # noqa: F811
    method: str,
) -> None:
    seen = provider[1].seen  # type: ignore[attr-defined]
    before = len(seen)
    answer = _get(side, "/x/v1/models", method=method)
    assert _status(answer) == 405, answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"allow: GET, HEAD, POST, PUT, PATCH, DELETE" in head
    assert b"method_not_allowed" in body and KEY.encode() not in answer
    assert len(seen) == before


def test_the_default_methods_still_pass(
    side: StreamhopProcess,  # noqa: F811
    provider: tuple[BackgroundAiohttp, object],  # noqa: F811
) -> None:
    assert _status(_get(side, "/x/v1/models")) == 200
    assert _status(_get(side, "/x/v1/files/f", method="DELETE")) == 200


@pytest.mark.parametrize("method", ["TRACE", "CONNECT"])
def test_trace_and_connect_cannot_be_configured(method: str) -> None:
    route = {"prefix": "/", "upstream": "http://127.0.0.1:9", "methods": ["GET", method]}
    with pytest.raises(ConfigError, match=r"routes\[0\]\.methods.*never forwarded"):
        config_from_dict({"routes": [route]})


def test_a_route_may_narrow_its_methods() -> None:
    route = {"prefix": "/", "upstream": "http://127.0.0.1:9", "methods": ["POST"]}
    assert config_from_dict({"routes": [route]}).routes[0].methods == ("POST",)
    with pytest.raises(ConfigError, match=r"routes\[0\]\.methods"):
        config_from_dict({"routes": [{**route, "methods": ["post"]}]})
