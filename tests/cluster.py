"""Several sidecar replicas as a cluster would run them, on loopback: a shared
``redis-server`` and a balancer that, like a Kubernetes Service, sends new connections only to
ready replicas."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import httpx2
import pytest

from tests.support import StreamhopProcess, free_port, wait_for


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A private ``redis-server`` (no persistence) on a free loopback port; yields its URL.
    Skips the test where ``redis-server`` is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def accepts() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    try:
        wait_for(accepts, 10, "redis-server to accept connections")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


class ReadyBalancer:
    """A loopback TCP balancer: each new connection goes to the first replica whose
    ``/readyz`` answers 200 (as a Service routes only to ready endpoints)."""

    def __init__(self, replicas: list[StreamhopProcess]) -> None:
        self.replicas = replicas
        self.routed: list[int] = []
        """Index of the replica each connection went to."""
        self.sent: list[bytearray] = []
        """What the client sent on each connection (same order as ``routed``)."""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> ReadyBalancer:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        self._server.close()
        for writer in list(self._writers):  # connections a client still keeps alive
            writer.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
        await self._server.wait_closed()

    def _ready(self) -> int | None:
        for i, replica in enumerate(self.replicas):
            assert replica.admin_url is not None
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(replica.admin_url + "/readyz", timeout=10).status_code == 200:
                    return i
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._route(reader, writer)
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _route(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = await asyncio.to_thread(self._ready)
        if index is None:
            return
        self.routed.append(index)
        sent = bytearray()
        self.sent.append(sent)
        host, port = self.replicas[index].url.removeprefix("http://").split(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self._writers.add(up_writer)

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bytearray | None = None
        ) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if record is not None:
                        record += data
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(ConnectionError, OSError):
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer, sent), pipe(up_reader, writer))
        finally:
            self._writers.discard(up_writer)
            up_writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await up_writer.wait_closed()
