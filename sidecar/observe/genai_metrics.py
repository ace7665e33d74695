"""OpenTelemetry GenAI metrics of proxied requests, recorded once per request from its record.

On with ``[tracing] export_metrics = true`` (exported over OTLP/HTTP next to the spans, see
:class:`~streamhop.sidecar.observe.tracing.Tracing`); the Prometheus metrics on the admin
listener are unaffected. Names, units, bucket boundaries and attributes follow the OpenTelemetry
GenAI semantic conventions (status: Development) as they stand in the
``open-telemetry/semantic-conventions-genai`` repository:

* ``docs/gen-ai/client-inference.md``, "Metrics": ``gen_ai.client.inference.duration`` (the
  upstream call: "from when the client issues the inference request to when the response is fully
  received or the operation terminates with an error") and
  ``gen_ai.client.inference.time_to_first_chunk`` ("reported for streaming calls and SHOULD NOT
  be reported otherwise");
* ``docs/gen-ai/gen-ai-token-metrics.md``: the counters
  ``gen_ai.client.inference.usage.input_tokens`` / ``.output_tokens`` (with
  ``gen_ai.token.modality``) and the per-operation histograms
  ``gen_ai.client.inference.operation.input_tokens`` / ``.output_tokens``, recorded "for each
  inference operation, including failed ones", ``0`` when the response reported no usage (then
  with modality ``unknown``);
* ``docs/gen-ai/gen-ai-metrics.md``: ``gen_ai.client.operation.duration`` for GenAI calls that
  are not inference (``embeddings``), and the model-server metrics streamhop answers as the
  server its clients call: ``gen_ai.server.request.duration``,
  ``gen_ai.server.time_to_first_token`` and ``gen_ai.server.time_per_output_token`` (request
  duration minus time to first token, divided by the output tokens after the first; successful
  responses only).

``docs/gen-ai/non-normative/migration.md`` of that repository lists the older names
(``gen_ai.client.operation.duration`` for inference, ``gen_ai.client.token.usage``,
``gen_ai.client.operation.time_to_first_chunk``) that these replace.

Deliberately not recorded: ``gen_ai.client.inference.time_per_output_chunk`` (one observation
per upstream event; streamhop records nothing per event for OpenTelemetry — the Prometheus
``streamhop_upstream_inter_event_seconds`` measures the same gaps), and the cache/reasoning token
counters (streams report them in provider-specific shapes streamhop does not parse). Model names
are recorded as sent and received, not mapped through ``[metrics] models``: the SDK's own
cardinality limit (2000 attribute sets per instrument, then an overflow series) bounds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from opentelemetry.metrics import Meter
from opentelemetry.util.types import AttributeValue

from streamhop.sidecar.observe.record import StreamRecord

Attributes = dict[str, AttributeValue]

# ExplicitBucketBoundaries the conventions name for each instrument (seconds, tokens).
DURATION_BUCKETS_S: Final = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
SERVER_TTFT_BUCKETS_S: Final = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
PER_TOKEN_BUCKETS_S: Final = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
)
TOKEN_BUCKETS: Final = tuple(float(4**i) for i in range(14))  # 1, 4, 16, ... 67108864

INFERENCE_OPERATIONS: Final = frozenset(("chat", "text_completion", "generate_content"))
"""``gen_ai.operation.name`` values that are inference (the ``gen_ai.client.inference.*``
metrics); every other GenAI call is timed by ``gen_ai.client.operation.duration``."""


class GenAIMetrics:
    """The GenAI instruments of one meter, and :meth:`record` to fill them from a record.

    Args:
        meter: where the instruments live (tests pass one of a provider with an
            ``InMemoryMetricReader``).
    """

    def __init__(self, meter: Meter) -> None:
        hist = meter.create_histogram
        self.inference_duration = hist(
            "gen_ai.client.inference.duration",
            unit="s",
            description="GenAI client inference operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self.operation_duration = hist(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self.time_to_first_chunk = hist(
            "gen_ai.client.inference.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk, from when the client issues the "
            "generation request to when the first chunk is received in the response stream.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self.usage_input = meter.create_counter(
            "gen_ai.client.inference.usage.input_tokens",
            unit="{token}",
            description="The number of input (prompt) tokens used, including cached tokens.",
        )
        self.usage_output = meter.create_counter(
            "gen_ai.client.inference.usage.output_tokens",
            unit="{token}",
            description="The number of output (completion) tokens used, including reasoning "
            "tokens.",
        )
        self.operation_input = hist(
            "gen_ai.client.inference.operation.input_tokens",
            unit="{token}",
            description="The number of input (prompt) tokens used per inference operation.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.operation_output = hist(
            "gen_ai.client.inference.operation.output_tokens",
            unit="{token}",
            description="The number of output (completion) tokens used per inference operation.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.server_duration = hist(
            "gen_ai.server.request.duration",
            unit="s",
            description="Generative AI server request duration such as time-to-last byte or "
            "last output token.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self.server_ttft = hist(
            "gen_ai.server.time_to_first_token",
            unit="s",
            description="Time to generate first token for successful responses.",
            explicit_bucket_boundaries_advisory=SERVER_TTFT_BUCKETS_S,
        )
        self.server_per_token = hist(
            "gen_ai.server.time_per_output_token",
            unit="s",
            description="Time per output token generated after the first token for successful "
            "responses.",
            explicit_bucket_boundaries_advisory=PER_TOKEN_BUCKETS_S,
        )

    def record(
        self, record: StreamRecord, call: Mapping[str, AttributeValue], error_type: str | None
    ) -> None:
        """Record one finished GenAI request (a few instrument updates, once per request).

        Args:
            record: the finished request (``finished_at`` set).
            call: the attributes every GenAI metric carries: ``gen_ai.operation.name``,
                ``gen_ai.provider.name``, and when known ``gen_ai.request.model``,
                ``server.address``, ``server.port`` (the provider's).
            error_type: ``error.type`` of a failed request (the upstream fault kind or the
                HTTP status), ``None`` when it succeeded.
        """
        end = record.finished_at
        if end is None:
            return
        base: Attributes = dict(call)
        if record.response_model is not None:
            base["gen_ai.response.model"] = record.response_model
        # Server-side metrics describe streamhop answering its client: the provider's address
        # is not theirs.
        server: Attributes = {
            k: v for k, v in base.items() if k not in ("server.address", "server.port")
        }
        failed = base if error_type is None else {**base, "error.type": error_type}
        server_failed = server if error_type is None else {**server, "error.type": error_type}
        inference = base["gen_ai.operation.name"] in INFERENCE_OPERATIONS
        start = record.upstream_request_at
        if start is not None:
            duration = self.inference_duration if inference else self.operation_duration
            duration.record(end - start, failed)
            first = record.upstream_first_event_at
            if first is not None and inference:
                self.time_to_first_chunk.record(first - start, base)
        if inference:
            self._tokens(record, base, failed)
        self.server_duration.record(end - record.received_at, server_failed)
        sent = record.first_content_sent_at
        if error_type is None and sent is not None:
            self.server_ttft.record(sent - record.received_at, server)
            out = record.usage_output_tokens
            if out is not None and out > 1:
                self.server_per_token.record((end - sent) / (out - 1), server)

    def _tokens(self, record: StreamRecord, base: Attributes, failed: Attributes) -> None:
        tokens_in = record.usage_input_tokens
        tokens_out = record.usage_output_tokens
        # The streams report no per-modality breakdown streamhop reads.
        counted: Attributes = {**base, "gen_ai.token.modality": "unknown"}
        self.usage_input.add(tokens_in or 0, counted)
        self.usage_output.add(tokens_out or 0, counted)
        self.operation_input.record(tokens_in or 0, failed)
        self.operation_output.record(tokens_out or 0, failed)
