"""Wire formats: one object per provider stream format, behind one protocol.

Names used in config (``[[routes]].format``), the middleware's ``format`` option and logs:
``openai-chat``, ``openai-responses``, ``anthropic``, ``sse``, and ``auto`` (detect from the first
event with data).

A format (:class:`~.base.Format`) owns, in its own module, everything streamhop knows about it:
detection from the first event, merge rules (``classify``/``open_group``), its terminal event,
token usage, the response's id, model and finish reasons, its error event and error body, the
request paths that speak it, and the OpenTelemetry GenAI names of its API. Callers only use the
protocol or the lookups in :mod:`.registry` (re-exported here), which never switch on a format's
name.

Adding a provider format:

1. one module here, say ``gemini.py``, with a stateless class implementing every member of
   :class:`~.base.Format` (``mypy --strict`` checks it against the protocol where it is
   registered), its docstring citing the provider's streaming and error documentation;
2. an instance of it in :data:`.registry.REGISTERED`, before the formats whose detection is
   looser (``openai-chat``'s ``choices``) and always before plain ``sse``;
3. tests: a recorded stream in the fixtures, and the per-format cases of
   ``tests/middleware/rechunk/test_formats.py`` and
   ``tests/middleware/rechunk/test_format_objects.py``.
"""

from __future__ import annotations

from streamhop.middleware.rechunk.formats.base import (
    MALFORMED,
    Content,
    Format,
    Kind,
    Match,
    MergeGroup,
    ResponseFacts,
    Usage,
)
from streamhop.middleware.rechunk.formats.registry import (
    DEFAULT_FORMAT_NAME,
    FORMAT_NAMES,
    FORMATS,
    REGISTERED,
    TERMINAL_HINTS,
    detect_format,
    error_body,
    error_event,
    error_format,
    format_for_path,
    get_format,
    operation_for_path,
    provider_for,
)

__all__ = [
    "DEFAULT_FORMAT_NAME",
    "FORMATS",
    "FORMAT_NAMES",
    "MALFORMED",
    "REGISTERED",
    "TERMINAL_HINTS",
    "Content",
    "Format",
    "Kind",
    "Match",
    "MergeGroup",
    "ResponseFacts",
    "Usage",
    "detect_format",
    "error_body",
    "error_event",
    "error_format",
    "format_for_path",
    "get_format",
    "operation_for_path",
    "provider_for",
]
