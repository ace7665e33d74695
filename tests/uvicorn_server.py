"""A real uvicorn server in a background thread, for tests of ASGI apps on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Literal

import uvicorn
from starlette.types import ASGIApp


class BackgroundUvicorn:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) from a daemon thread.

    Use as a context manager; ``url`` is ``http://127.0.0.1:PORT``. On exit the server shuts
    down (open connections get up to 2 s) and the thread is joined.

    Args:
        app: the ASGI app.
        lifespan: uvicorn's ``lifespan`` setting (``"on"`` runs the app's startup/shutdown).
    """

    def __init__(self, app: ASGIApp, lifespan: Literal["auto", "on", "off"] = "off") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> BackgroundUvicorn:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.__exit__(None, None, None)
                raise RuntimeError("uvicorn did not start within 15 s")
            time.sleep(0.01)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()
