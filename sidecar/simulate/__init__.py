"""``streamhop simulate``: a fast fake LLM provider for demos, tests and benchmarks.

It serves OpenAI Chat Completions, OpenAI Responses and Anthropic Messages, streaming and not,
with tool calls and multi-byte text, paced like a Cerebras-class provider (about 2,000 tokens/s in
200 SSE events/s after a short TTFT) and written in pieces that split UTF-8 sequences, so a proxy's
SSE decoder and coalescer meet real-world reads. It can also replay a recorded ``.sse`` file, and
play a buffering hop in front of itself (the ``buffered`` fault, ``--buffered-every-ms`` or header
``x-sim-buffered-every-ms``: see :mod:`.buffering`).

Public interface: :class:`SimulatorConfig`, :func:`make_app`, and in :mod:`.cli`
``add_arguments``/``run``. Per-request ``x-sim-*`` headers override the pacing for one request;
``GET /_simulator/streams`` tells what each stream did (see :mod:`.streams`).
"""

from __future__ import annotations

from streamhop.sidecar.simulate.app import make_app
from streamhop.sidecar.simulate.config import SimulatorConfig

__all__ = ["SimulatorConfig", "make_app"]
