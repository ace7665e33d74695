"""The ``redis`` resume store: one Redis Stream per stream, shared by every replica.

Key ``streamhop:resume:<stream-id>``, entries with explicit ids so a resume can ``XREAD`` from
``<seq>-0`` directly:

* ``0-1`` ``{k: head, h: <JSON [[name, value], ...] of the SSE response headers>}``
* ``<seq>-0`` ``{e: <the encoded event, id line included>}`` for seq = 1, 2, 3...
* ``<last seq + 1>-0`` ``{k: end}`` when the generation ended, or ``{k: full}`` when the log
  passed ``max_stream_bytes`` (nothing is logged after it).

Every write batch is one pipeline: ``XADD key MAXLEN ~ REDIS_MAXLEN id ...`` per entry and
``EXPIRE key window_s`` (so a log lives ``window_s`` after its last write). Writes are queued by
the synchronous :meth:`_Writer.stamp` and sent by one background task per stream, so the stream
never waits for Redis. A resume replays with ``XREAD`` and follows the live tail with
``XREAD BLOCK``.

Failure: a write that fails disables that stream's log (the stream goes on without resume); it
is counted (``streamhop_resume_errors_total{store="redis",kind="write"}``) and logged once when
the store starts failing, not per event or per stream; recovery is logged too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from streamhop.middleware.sse.encoder import encode_event
from streamhop.middleware.sse.events import SSEEvent
from streamhop.sidecar.resume.store import (
    Headers,
    ResumeError,
    ResumeLogFullError,
    StreamNotFoundError,
    number_events,
)

logger = logging.getLogger(__name__)

KEY_PREFIX: Final = "streamhop:resume:"
REDIS_MAXLEN: Final = 1_000_000
"""``XADD ... MAXLEN ~`` bound per stream: a safety net only (``max_stream_bytes`` is the
working bound), large enough never to trim a log that is still within its byte cap."""
STOP_CHANNEL: Final = "streamhop:stop"
"""Pub/sub channel on which a replica asks the others to stop a generation: its log key and an
HMAC-SHA256 of it under ``[resume] binding_key`` (``<key>.<mac>``), so that a client of the
Redis server who is not a replica cannot stop generations; unsigned or forged messages are
dropped."""
RESUMED_CHANNEL: Final = "streamhop:resumed"
"""Pub/sub channel on which a replica tells the others a client resumed the log under a key
(a generation waiting out its disconnect grace there goes on); signed like the stops, under
its own domain (``resumed``), so a stop message is never taken for a resume or back."""
LISTEN_RETRY_S: Final = 1.0
"""Pause before subscribing again after a signal channel's connection failed."""
BLOCK_MS: Final = 5000
"""``XREAD BLOCK`` milliseconds; after an empty wait the reader checks the key still exists."""
_STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


class _Writer:
    def __init__(self, store: RedisStore, stream_id: str, headers: Headers, key: str) -> None:
        self._store = store
        self.key = KEY_PREFIX + key
        self._prefix = stream_id + ":"
        self._seq = 0
        self._size = 0
        self._full = False
        self._dead = False
        self._closed = False
        head = orjson.dumps([[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers])
        self._pending: list[tuple[str, dict[str, bytes]]] = [("0-1", {"k": b"head", "h": head})]
        self._wake = asyncio.Event()
        self._wake.set()
        self.task = asyncio.get_running_loop().create_task(self._run(), name="streamhop-resume")

    @property
    def last_seq(self) -> int:
        return self._seq

    def stamp(self, events: list[SSEEvent]) -> list[SSEEvent]:
        stamped, seq = number_events(self._prefix, self._seq, events)
        if not (self._dead or self._full):
            pending = self._pending
            for i, event in enumerate(stamped, self._seq + 1):
                data = encode_event(event).encode("utf-8", "surrogateescape")
                self._size += len(data)
                if self._size > self._store.max_stream_bytes:
                    self._full = True
                    pending.append((f"{i}-0", {"k": b"full"}))
                    self._store.error("log_full", None)
                    break
                pending.append((f"{i}-0", {"e": data}))
            self._wake.set()
        self._seq = seq
        return stamped

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wake.set()

    async def _run(self) -> None:
        store = self._store
        client = store.client
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                closing = self._closed
                batch, self._pending = self._pending, []
                if closing and not self._full:
                    batch.append((f"{self._seq + 1}-0", {"k": b"end"}))
                if batch:
                    pipe = client.pipeline(transaction=False)
                    for entry_id, fields in batch:
                        pipe.xadd(
                            self.key,
                            fields,  # type: ignore[arg-type]
                            id=entry_id,
                            maxlen=REDIS_MAXLEN,
                            approximate=True,
                        )
                    pipe.expire(self.key, int(store.window_s + 0.999))
                    await pipe.execute()
                    store.ok()
                if closing:
                    return
        except _STORE_ERRORS as exc:
            self._dead = True
            self._pending = []
            store.error("write", exc)


class _Reader:
    def __init__(self, store: RedisStore, key: str, headers: Headers) -> None:
        self._store = store
        self._key = key
        self.headers = headers

    async def events_after(self, seq: int) -> AsyncIterator[Sequence[bytes]]:
        client = self._store.client
        last = f"{seq}-0"
        while True:
            try:
                answer: Any = await client.xread({self._key: last}, count=1000, block=BLOCK_MS)
                if not answer and not await client.exists(self._key):
                    raise StreamNotFoundError(f"the resume log {self._key} expired")
            except _STORE_ERRORS as exc:
                self._store.error("read", exc)
                raise ResumeError(f"resume store failed: {exc}") from exc
            for _key, entries in answer or ():
                batch: list[bytes] = []
                for entry_id, fields in entries:
                    last = entry_id
                    kind = fields.get(b"k")
                    if kind is None:
                        batch.append(fields[b"e"])
                    elif kind == b"end":
                        if batch:
                            yield batch
                        return
                    elif kind == b"full":
                        raise ResumeLogFullError(f"the resume log {self._key} was closed")
                if batch:
                    yield batch


class RedisStore:
    """Logs in Redis Streams (see the module docstring).

    Args:
        url: ``redis://`` or ``rediss://`` (TLS) URL; ACL credentials as userinfo
            (``rediss://user:password@host:6380/0``).
        window_s: seconds a log lives after its last write.
        max_stream_bytes: encoded event bytes one log may hold.
        on_error: called with a kind (``write``, ``read``, ``log_full``) per failure.
        connect_timeout_s: seconds to connect to Redis before a command fails.
        signing_key: the key stop messages are signed and checked with (``[resume]
            binding_key``, shared by the replicas); empty: a random key, so this replica
            accepts only its own stops.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        window_s: float,
        max_stream_bytes: int,
        on_error: Callable[[str], None] | None = None,
        connect_timeout_s: float = 1.0,
        signing_key: bytes = b"",
    ) -> None:
        self._signing_key = signing_key or os.urandom(32)
        self.window_s = window_s
        self.max_stream_bytes = max_stream_bytes
        self._on_error = on_error
        self._failing = False
        self._writers: set[asyncio.Task[None]] = set()
        self._listeners: list[asyncio.Task[None]] = []
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )

    def open_writer(self, stream_id: str, headers: Headers, key: str) -> _Writer:
        writer = _Writer(self, stream_id, headers, key)
        self._writers.add(writer.task)
        writer.task.add_done_callback(self._writers.discard)
        return writer

    async def open_reader(self, log_key: str, stream_id: str) -> _Reader:
        key = KEY_PREFIX + log_key
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.xrange(key, "0-1", "0-1")
            pipe.xrevrange(key, "+", "-", count=1)
            head, last = await pipe.execute()
        except _STORE_ERRORS as exc:
            self.error("read", exc)
            raise ResumeError(f"resume store failed: {exc}") from exc
        self.ok()
        if not head:
            raise StreamNotFoundError(f"no resumable stream {stream_id!r} (unknown or expired)")
        if last and last[0][1].get(b"k") == b"full":
            raise ResumeLogFullError(
                f"the resume log of stream {stream_id} passed max_stream_bytes="
                f"{self.max_stream_bytes} and was closed"
            )
        pairs = orjson.loads(head[0][1][b"h"])
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs]
        return _Reader(self, key, headers)

    async def log_state(self, key: str) -> str:
        try:
            last = await self.client.xrevrange(KEY_PREFIX + key, "+", "-", count=1)
        except _STORE_ERRORS as exc:
            self.error("read", exc)
            raise ResumeError(f"resume store failed: {exc}") from exc
        if not last:
            return "missing"
        fields = last[0][1] or {}
        return "ended" if fields.get(b"k") == b"end" else "running"

    async def publish_stop(self, key: str) -> None:
        await self._publish(STOP_CHANNEL, sign_stop(self._signing_key, key))

    async def publish_resumed(self, key: str) -> None:
        await self._publish(RESUMED_CHANNEL, sign_signal(self._signing_key, "resumed", key))

    async def _publish(self, channel: str, message: str) -> None:
        try:
            await self.client.publish(channel, message)
        except _STORE_ERRORS as exc:
            self.error("write", exc)
            raise ResumeError(f"resume store failed: {exc}") from exc

    def listen_stops(self, on_stop: Callable[[str], None]) -> None:
        """Subscribe to :data:`STOP_CHANNEL` in a background task (resubscribing after a
        failure, every :data:`LISTEN_RETRY_S`)."""
        self._listen(STOP_CHANNEL, "stop", on_stop)

    def listen_resumes(self, on_resumed: Callable[[str], None]) -> None:
        """Subscribe to :data:`RESUMED_CHANNEL` in a background task, as :meth:`listen_stops`."""
        self._listen(RESUMED_CHANNEL, "resumed", on_resumed)

    def _listen(self, channel: str, kind: str, on_key: Callable[[str], None]) -> None:
        """Call ``on_key`` with the log key of each message on ``channel`` signed for
        ``kind``; a forged one is counted (``stop_forged``) and dropped."""

        async def listen() -> None:
            while True:
                try:
                    async with self.client.pubsub() as pubsub:
                        await pubsub.subscribe(channel)
                        async for message in pubsub.listen():
                            if message.get("type") != "message":
                                continue
                            text = bytes(message["data"]).decode("ascii", "replace")
                            key = verify_signal(self._signing_key, kind, text)
                            if key is None:
                                self.error("stop_forged", None)  # counted, never logged per message
                                continue
                            on_key(key)
                except _STORE_ERRORS as exc:
                    self.error("read", exc)
                await asyncio.sleep(LISTEN_RETRY_S)

        task = asyncio.get_running_loop().create_task(listen(), name=f"streamhop-{kind}")
        self._listeners.append(task)

    def error(self, kind: str, exc: BaseException | None) -> None:
        """Count a failure; log the first one of an outage (``exc`` set) once."""
        if self._on_error is not None:
            self._on_error(kind)
        if exc is not None and not self._failing:
            self._failing = True
            logger.error(
                "resume store redis failed (%s: %s); streams go on without resume "
                "until it answers again (further errors are only counted)",
                type(exc).__name__,
                exc,
            )

    def ok(self) -> None:
        """A command succeeded: end an outage."""
        if self._failing:
            self._failing = False
            logger.warning("resume store redis answers again")

    async def aclose(self) -> None:
        for listener in self._listeners:
            listener.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)
        if self._writers:
            await asyncio.wait(set(self._writers), timeout=2.0)
        await self.client.aclose()


def sign_signal(signing_key: bytes, kind: str, key: str) -> str:
    """The ``kind`` (``stop``, ``resumed``) message for log ``key``:
    ``<key>.<HMAC-SHA256(signing_key, kind NUL key)>`` (hex, 64 digits; RFC 2104)."""
    data = kind.encode("ascii") + b"\0" + key.encode("ascii")
    return f"{key}.{hmac.new(signing_key, data, hashlib.sha256).hexdigest()}"


def verify_signal(signing_key: bytes, kind: str, message: str) -> str | None:
    """The log key of a ``kind`` message signed with ``signing_key``, else ``None``."""
    key, dot, _ = message.rpartition(".")
    if not dot or not key.isascii():
        return None
    return key if hmac.compare_digest(sign_signal(signing_key, kind, key), message) else None


def sign_stop(signing_key: bytes, key: str) -> str:
    """The stop message for log ``key`` (:func:`sign_signal` with ``stop``)."""
    return sign_signal(signing_key, "stop", key)


def verify_stop(signing_key: bytes, message: str) -> str | None:
    """The log key of a stop message signed with ``signing_key``, else ``None``."""
    return verify_signal(signing_key, "stop", message)
