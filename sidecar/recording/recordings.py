"""Recording for the whole process: which streams are recorded, and writing them once they end.

:meth:`Recordings.start` decides when a stream opens (:meth:`~streamhop.sidecar.upstream.edge.
EdgeContext.open`): ``X-Streamhop-Record: 1`` (or ``0``) where the route has ``client_record``,
else ``random() < sample`` for the routes in ``[record] routes`` (empty: every route). A
recorded stream gets a :class:`~.recorder.StreamRecorder`, fed by the relay; when the stream is
over (:meth:`~streamhop.sidecar.upstream.opening.OpenStream.close`) its pair of files is written
off the event loop (``asyncio.to_thread``) by :class:`~.store.RecordingStore`.

Only re-chunked SSE answers are written: a sampled request answered with JSON, an upstream
error body or a body streamhop cannot decode leaves nothing. A recording never breaks a stream:
every failure is logged as a warning and counted (``streamhop_recordings_total``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import orjson
from prometheus_client import CollectorRegistry

from streamhop.middleware.controls import Controls
from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config.model import RecordConfig, RouteConfig
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.recording.metrics import RecordingMetrics
from streamhop.sidecar.recording.recorder import StreamRecorder
from streamhop.sidecar.recording.redact import redact_headers
from streamhop.sidecar.recording.store import RecordingStore, RecordingTooLargeError
from streamhop.sidecar.recording.timeline import build_timeline

logger = logging.getLogger(__name__)

MAX_PENDING_WRITES: Final = 8
"""Recordings waiting for their write at once; past it a finished recording is dropped
(``dropped``) rather than held in memory behind a slow disk."""


class Recordings:
    """``[record]`` at run time (see the module docstring).

    Args:
        config: the ``[record]`` table (``dir`` set).
        store: the directory, opened.
        metrics: the recording families.
        binding_headers: more request header names to redact (``[resume] binding_headers``).
        sample: the random source, ``[0, 1)`` (tests pass their own).
    """

    def __init__(
        self,
        config: RecordConfig,
        store: RecordingStore,
        metrics: RecordingMetrics,
        binding_headers: Sequence[str] = (),
        sample: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self._binding_headers = tuple(binding_headers)
        self._sample = sample
        self._routes = frozenset(config.routes)
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(
        cls, config: RecordConfig, registry: CollectorRegistry, binding_headers: Sequence[str]
    ) -> Recordings | None:
        """The process's recordings, or ``None`` when ``[record] dir`` is empty. Creates the
        directory (0700).

        Raises:
            ConfigError: ``record.dir`` cannot be created or read.
        """
        if not config.enabled:
            return None
        store = RecordingStore(Path(config.dir), config.max_bytes)
        try:
            store.open()
        except OSError as exc:
            raise ConfigError("record.dir", f"cannot use {config.dir!r}: {exc}") from exc
        metrics = RecordingMetrics(registry, lambda: float(store.bytes))
        return cls(config, store, metrics, binding_headers)

    def wanted(self, route: RouteConfig, controls: Controls) -> bool:
        """Whether a stream on ``route`` with ``controls`` is recorded: the request's
        ``X-Streamhop-Record`` where the route lets it choose, else the sample."""
        if controls.record is not None and route.client_record:
            return controls.record
        if not self._routes or route.prefix in self._routes:
            sample = self.config.sample
            return sample > 0 and self._sample() < sample
        return False

    def start(
        self,
        route: RouteConfig,
        controls: Controls,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> StreamRecorder | None:
        """A recorder for a stream that opens now, or ``None`` when it is not recorded.

        Args:
            route: the stream's route.
            controls: its control headers.
            headers: the headers it sends upstream (redacted here).
            body: its request body (kept only with ``record_request``).
        """
        if not self.wanted(route, controls):
            return None
        also = (*route.headers, *self._binding_headers)
        return StreamRecorder(
            self.config.max_recording_bytes,
            self._finish,
            redact_headers(headers, also),
            body if self.config.record_request else None,
            also,
        )

    def _finish(self, recorder: StreamRecorder, record: StreamRecord) -> None:
        """A recorded stream ended: schedule its write (or count why it is not written)."""
        if not record.sse:
            return  # not re-chunked (JSON, an error body, an unknown encoding): nothing to replay
        if recorder.too_large:
            self._count("too_large")
            logger.warning(
                "recording %s dropped: over max_recording_bytes=%d",
                record.request_id,
                recorder.limit,
            )
            return
        if len(self._pending) >= MAX_PENDING_WRITES:
            self._count("dropped")
            logger.warning(
                "recording %s dropped: %d writes already pending",
                record.request_id,
                len(self._pending),
            )
            return
        timeline = build_timeline(recorder, record)
        task = asyncio.get_running_loop().create_task(
            self._write(record.request_id, recorder, timeline)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _write_now(self, stem: str, recorder: StreamRecorder, timeline: dict[str, Any]) -> int:
        """Join, encode and write (in a worker thread: none of it on the event loop)."""
        encoded = orjson.dumps(timeline, option=orjson.OPT_INDENT_2)
        return self.store.write(stem, recorder.body(), encoded)

    async def _write(self, stem: str, recorder: StreamRecorder, timeline: dict[str, Any]) -> None:
        try:
            evicted = await asyncio.to_thread(self._write_now, stem, recorder, timeline)
        except RecordingTooLargeError as exc:
            self._count("too_large")
            logger.warning("recording dropped: %s", exc)
        except (OSError, ValueError) as exc:
            self._count("failed")
            logger.warning("recording %s not written: %s", stem, exc)
        else:
            self._count("written")
            if evicted:
                self.metrics.evicted.inc(evicted)

    def _count(self, result: str) -> None:
        self.metrics.recordings.labels(result).inc()

    async def aclose(self) -> None:
        """Wait for the pending writes (at shutdown)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
