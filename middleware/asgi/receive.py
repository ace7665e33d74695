"""The middleware's side of ``receive``: one reader of the server, the app fed through an inbox.

:class:`ReceiveRelay` is the only caller of the server's ``receive`` for an HTTP request. It hands
the app its ``http.request`` messages in order through a one-message inbox (so the body is never
buffered, and a client that sent ``Expect: 100-continue`` gets its ``100 Continue`` at once), and
reports the server's ``http.disconnect`` to its owner, which decides what it means (a client that
left mid-response, or just the end of a complete exchange).

After :meth:`ReceiveRelay.disconnect`, every ``receive()`` of the app — one already waiting and
every later one — answers ``http.disconnect``: that is how an ASGI app learns that its client is
gone, and frameworks that run the view in a child task (Django, Quart, Starlette's
``StreamingResponse``) act on it by cancelling that child themselves. The relay records whether
the app is listening (:attr:`ReceiveRelay.waiting`) and whether it has heard
(:attr:`ReceiveRelay.heard`), so its owner can tell an app that stops by itself from one that
must be cancelled.

Divergence from a server's own ``receive``: the relay reads one message ahead of the app (never
more), so the server sees the body read as soon as the app asks for it, not later.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final

from starlette.types import Message, Receive

_DISCONNECT: Final[Message] = {"type": "http.disconnect"}


class ReceiveRelay:
    """Reads the server's ``receive`` for the app and answers the app's ``receive()`` calls.

    Args:
        receive: the server's ``receive``.
        on_disconnect: called (once, from :meth:`watch`) when the server reports
            ``http.disconnect``; it decides whether to call :meth:`disconnect`.
        peek_bytes: keep the first request body **bytes** up to this many in :attr:`peek`
            (``0``: keep none). A body longer than this leaves :attr:`peek` ``None``.
    """

    __slots__ = (
        "_arrived",
        "_disconnected",
        "_error",
        "_heard",
        "_inbox",
        "_on_disconnect",
        "_peek",
        "_peek_bytes",
        "_receive",
        "_taken",
        "_waiting",
    )

    def __init__(
        self, receive: Receive, on_disconnect: Callable[[], None], *, peek_bytes: int = 0
    ) -> None:
        self._receive = receive
        self._on_disconnect = on_disconnect
        self._peek_bytes = peek_bytes
        self._peek: bytearray | None = bytearray() if peek_bytes > 0 else None
        self._inbox: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()
        self._disconnected = False
        self._heard = False
        self._waiting = 0
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        state = "disconnected" if self._disconnected else "open"
        return (
            f"<ReceiveRelay {state} inbox={len(self._inbox)} waiting={self._waiting} "
            f"heard={self._heard}>"
        )

    @property
    def waiting(self) -> int:
        """How many ``receive()`` calls of the app are suspended, waiting for a message."""
        return self._waiting

    @property
    def heard(self) -> bool:
        """True once a ``receive()`` of the app has returned ``http.disconnect``."""
        return self._heard

    @property
    def peek(self) -> bytes | None:
        """The request body read so far, when kept (see ``peek_bytes``); else ``None``."""
        return None if self._peek is None else bytes(self._peek)

    def disconnect(self) -> None:
        """From now on, every ``receive()`` of the app (one waiting, and every later one)
        returns ``http.disconnect`` once the messages already read for it are taken."""
        self._disconnected = True
        self._arrived.set()

    async def watch(self) -> None:
        """Read the server's ``receive`` until ``http.disconnect`` (reported to
        ``on_disconnect``) or an error (re-raised by the app's next ``receive()``).

        Run it as a task; it returns when the server has nothing more to say. It reads at most
        one message ahead of the app.
        """
        inbox = self._inbox
        try:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    self._on_disconnect()
                    return
                peek = self._peek
                if peek is not None:
                    chunk = message.get("body", b"")
                    if len(peek) + len(chunk) > self._peek_bytes:
                        self._peek = None
                    else:
                        peek += chunk
                inbox.append(message)
                self._arrived.set()
                if message.get("more_body", False):
                    # Read ahead of the app by one message only: the body is never buffered.
                    while inbox:
                        self._taken.clear()
                        await self._taken.wait()
        except Exception as exc:  # the server's receive failed: the app's receive raises it
            self._error = exc
            self._arrived.set()

    async def receive(self) -> Message:
        """The app's ``receive``: its ``http.request`` messages in order, then
        ``http.disconnect`` once :meth:`disconnect` was called.

        Raises:
            Whatever the server's ``receive`` raised, once the messages before it are taken.
        """
        inbox = self._inbox
        while True:
            if inbox:
                message = inbox.popleft()
                self._taken.set()
                return message
            if self._disconnected:
                self._heard = True
                return dict(_DISCONNECT)
            if self._error is not None:
                raise self._error
            self._arrived.clear()
            self._waiting += 1
            try:
                await self._arrived.wait()
            finally:
                self._waiting -= 1
