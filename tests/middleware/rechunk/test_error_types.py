"""The error ``type`` of the bodies streamhop answers itself follows the response's HTTP status:
a refused request (4xx) reads as the client's fault in the provider's own words, an outage (5xx)
as the server's; the in-stream error events keep their server-side types. Checked on the format
objects and, with the official SDKs, against a real sidecar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from streamhop.middleware.rechunk.formats import error_body, get_format
from streamhop.middleware.rechunk.formats.anthropic import anthropic_error_type
from streamhop.middleware.rechunk.formats.base import openai_error_type
from tests.support import StreamhopProcess, serve

OPENAI_SHAPED = ("openai-chat", "openai-responses", "sse", None, "auto")

# Anthropic, https://docs.anthropic.com/en/api/errors: the statuses streamhop answers itself.
ANTHROPIC_TYPES = [
    (400, "invalid_request_error"),
    (403, "permission_error"),
    (404, "not_found_error"),
    (405, "invalid_request_error"),
    (408, "invalid_request_error"),
    (410, "invalid_request_error"),
    (413, "request_too_large"),
    (421, "invalid_request_error"),
    (429, "rate_limit_error"),
    (431, "invalid_request_error"),
    (500, "api_error"),
    (502, "api_error"),
    (503, "overloaded_error"),
    (504, "api_error"),
    (529, "overloaded_error"),
    (None, "api_error"),
]

# OpenAI, https://platform.openai.com/docs/guides/error-codes: every 4xx streamhop answers is
# invalid_request_error, every 5xx server_error.
OPENAI_TYPES = [
    (400, "invalid_request_error"),
    (403, "invalid_request_error"),
    (404, "invalid_request_error"),
    (405, "invalid_request_error"),
    (408, "invalid_request_error"),
    (410, "invalid_request_error"),
    (413, "invalid_request_error"),
    (421, "invalid_request_error"),
    (431, "invalid_request_error"),
    (502, "server_error"),
    (503, "server_error"),
    (504, "server_error"),
    (None, "server_error"),
]


@pytest.mark.parametrize(("status", "expected"), ANTHROPIC_TYPES)
def test_anthropic_body_type_follows_the_status(status: int | None, expected: str) -> None:
    assert anthropic_error_type(status) == expected
    body = json.loads(error_body("anthropic", "some_code", "a sentence", status))
    assert body == {
        "type": "error",
        "error": {"type": expected, "message": "a sentence", "code": "some_code"},
    }


@pytest.mark.parametrize("name", OPENAI_SHAPED)
@pytest.mark.parametrize(("status", "expected"), OPENAI_TYPES)
def test_openai_body_type_follows_the_status(
    name: str | None, status: int | None, expected: str
) -> None:
    assert openai_error_type(status) == expected
    body = json.loads(error_body(name, "some_code", "a sentence", status))
    assert body == {
        "error": {"message": "a sentence", "type": expected, "code": "some_code", "param": None}
    }


def test_the_format_objects_take_the_status_too() -> None:
    anthropic_body = json.loads(get_format("anthropic").error_body("no_route", "m", 404))
    assert anthropic_body["error"]["type"] == "not_found_error"
    chat_body = json.loads(get_format("openai-chat").error_body("no_route", "m", 404))
    assert chat_body["error"]["type"] == "invalid_request_error"


def test_in_stream_error_events_keep_their_server_side_types() -> None:
    """A stream streamhop cuts (upstream timeout, disconnect) is not the client's fault."""
    event = get_format("anthropic").error_event("upstream_timeout", "m")
    assert event is not None
    assert json.loads(event.data or "")["error"]["type"] == "api_error"
    event = get_format("openai-chat").error_event("upstream_timeout", "m")
    assert event is not None
    assert json.loads(event.data or "")["error"]["type"] == "server_error"


# ----------------------------------------------------------------------------------------------
# The official SDKs against a real sidecar


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamhopProcess]:
    """A sidecar with one route, ``/only``: every other path is ``404 no_route``; no request of
    these tests reaches the (closed) upstream."""
    config = """
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[routes]]
prefix = "/only"
upstream = "http://127.0.0.1:9"
"""
    proc = serve(tmp_path_factory.mktemp("error-types"), config)
    yield proc
    proc.stop()


BAD_CONTROL = {"X-Streamhop-Mode": "turbo"}


def _openai_call(base_url: str, headers: dict[str, str]) -> None:
    with openai.OpenAI(
        base_url=base_url, api_key="x", max_retries=0, timeout=10, default_headers=headers
    ) as client:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )


def _anthropic_call(base_url: str, headers: dict[str, str]) -> None:
    with anthropic.Anthropic(
        base_url=base_url, api_key="x", max_retries=0, timeout=10, default_headers=headers
    ) as client:
        client.messages.create(
            model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}], stream=True
        )


CASES: list[Any] = [
    # (sdk call, path under the sidecar, headers, exception class, status, code, body type)
    pytest.param(
        _openai_call, "/v1", {}, openai.NotFoundError, 404, "no_route",
        "invalid_request_error", id="openai-404-no_route",
    ),
    pytest.param(
        _openai_call, "/only/v1", BAD_CONTROL, openai.BadRequestError, 400,
        "bad_control_header", "invalid_request_error", id="openai-400-bad_control_header",
    ),
    pytest.param(
        _anthropic_call, "", {}, anthropic.NotFoundError, 404, "no_route", "not_found_error",
        id="anthropic-404-no_route",
    ),
    pytest.param(
        _anthropic_call, "/only", BAD_CONTROL, anthropic.BadRequestError, 400,
        "bad_control_header", "invalid_request_error", id="anthropic-400-bad_control_header",
    ),
]  # fmt: skip


def _error_object(exc: openai.APIStatusError | anthropic.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict), body
    # openai's SDK hands over the inner error object, anthropic's the whole body.
    inner = body.get("error", body)
    assert isinstance(inner, dict), body
    return inner


@pytest.mark.integration
@pytest.mark.parametrize(("call", "path", "headers", "cls", "status", "code", "kind"), CASES)
def test_sdks_raise_the_client_error_class_with_the_providers_error_type(
    sidecar: StreamhopProcess,
    call: Any,
    path: str,
    headers: dict[str, str],
    cls: type[openai.APIStatusError | anthropic.APIStatusError],
    status: int,
    code: str,
    kind: str,
) -> None:
    with pytest.raises(cls) as caught:
        call(sidecar.url + path, headers)
    assert caught.value.status_code == status
    error = _error_object(caught.value)
    assert error["code"] == code
    assert error["type"] == kind
