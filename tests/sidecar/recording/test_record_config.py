"""``[record]`` and the route's ``client_record``: defaults, and every refusal names its key."""

from __future__ import annotations

from typing import Any

import pytest

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config import config_from_dict
from streamhop.sidecar.config.model import RecordConfig

ROUTES = [{"prefix": "/a", "upstream": "http://a"}, {"prefix": "/b", "upstream": "http://b"}]


def _config(record: dict[str, Any], **route: Any) -> Any:
    routes = [{**ROUTES[0], **route}, ROUTES[1]]
    return config_from_dict({"routes": routes, "record": record})


def test_defaults_leave_recording_off() -> None:
    config = config_from_dict({"routes": ROUTES})
    assert config.record == RecordConfig()
    assert not config.record.enabled and config.record.sample == 0.0
    assert config.record.max_bytes == 1024**3 and config.record.max_recording_bytes == 16 * 1024**2
    assert config.record.routes == () and config.record.record_request is False
    assert config.routes[0].client_record is False


def test_a_full_table() -> None:
    config = _config(
        {
            "dir": "/var/lib/streamhop/recordings",
            "sample": 0.5,
            "max_bytes": 10_000,
            "max_recording_bytes": 5_000,
            "routes": ["/b"],
            "record_request": True,
        },
        client_record=True,
    )
    assert config.record == RecordConfig(
        dir="/var/lib/streamhop/recordings",
        sample=0.5,
        max_bytes=10_000,
        max_recording_bytes=5_000,
        routes=("/b",),
        record_request=True,
    )
    assert config.record.enabled and config.routes[0].client_record


@pytest.mark.parametrize(
    ("record", "key", "reason"),
    [
        ({"sample": 1.5}, "record.sample", "between 0 and 1"),
        ({"sample": -0.1}, "record.sample", ">= 0"),
        ({"sample": "all"}, "record.sample", "expected a number"),
        ({"max_bytes": 10}, "record.max_bytes", ">= 1024"),
        ({"max_bytes": 4096, "max_recording_bytes": 8192}, "record.max_recording_bytes", "fit"),
        ({"routes": "/a"}, "record.routes", "list of route prefixes"),
        ({"routes": ["a"]}, "record.routes", "list of route prefixes"),
        ({"routes": ["/c"]}, "record.routes[0]", "not a route prefix"),
        ({"record_request": "yes"}, "record.record_request", "true or false"),
        ({"dir": 1}, "record.dir", "string"),
        ({"directory": "/x"}, "record.directory", "unknown key"),
    ],
)
def test_refusals_name_the_key(record: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(record)
    assert info.value.key == key
    assert reason in str(info.value)


def test_client_record_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError) as info:
        _config({}, client_record="yes")
    assert info.value.key == "routes[0].client_record"


def test_an_unset_max_recording_bytes_follows_a_small_max_bytes_down() -> None:
    assert _config({"max_bytes": 4096}).record.max_recording_bytes == 4096
