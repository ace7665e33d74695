"""The error the app's ``send()`` raises once its response is over, and how to recognise it.

:class:`ClientDisconnectedError` is also importable from :mod:`.middleware`, where the docs name
it.
"""

from __future__ import annotations

from streamhop.middleware.errors import StreamHopError


class ClientDisconnectedError(StreamHopError, OSError):
    """The app called ``send()`` after it was told that its response is over.

    Raised by the app's ``send()`` once the middleware has stopped the response and the app has
    heard ``http.disconnect`` from ``receive()`` (or its own task has ended and another task of
    it goes on sending). An ``OSError``, as the ASGI spec asks of servers for a ``send()`` on a
    closed connection (uvicorn's ``ClientDisconnected`` is one too), so frameworks handle it as a
    disconnect: Starlette turns it into ``ClientDisconnect``, Django and Quart close the view's
    generator. The middleware never lets it, or an exception raised while handling it, escape to
    the server.

    Attributes:
        reason: why the response stopped: ``client_disconnect``, ``stall``, ``shutdown`` or
            ``event_too_large``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the response is over ({reason}): the app's send() can take no more")
        self.reason = reason


def caused_by_stop(error: BaseException) -> bool:
    """True when ``error`` is a :class:`ClientDisconnectedError` the middleware raised into the
    app, an exception raised while handling one (Starlette's ``ClientDisconnect``), or a group of
    only such exceptions."""
    if isinstance(error, BaseExceptionGroup):
        return all(caused_by_stop(e) for e in error.exceptions)
    return any(
        isinstance(e, ClientDisconnectedError) for e in (error, error.__cause__, error.__context__)
    )
