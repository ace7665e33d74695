"""Where one HTTP request through the middleware is: the states of :class:`~.responder.Responder`.

The states live here, apart from the responder that moves between them (h11 keeps its states in
``_state.py`` the same way), so that a reader sees the whole lifecycle in one screen; a
responder's :attr:`~.responder.Responder.phase` and its ``repr`` show the current one.
"""

from __future__ import annotations

import enum
from typing import Final


class Phase(enum.Enum):
    """Where one request is. It only moves forward::

        STARTING ─┬─► PASSING ──────────────► COMPLETE
                  └─► STREAMING ─► ENDING ──► COMPLETE
        any of these ─► STOPPING ─► TOLD    (STOPPING while the app is inside send())

    A ``http.disconnect`` from the server in ``COMPLETE`` is the end of the exchange (uvicorn
    says so after every response): the app's ``receive()`` answers it, nothing is stopped. In any
    earlier phase it stops the app.
    """

    STARTING = "starting"
    """The app runs; no ``http.response.start`` yet."""
    PASSING = "passing"
    """A response that is not re-chunked started: every message goes through as it is."""
    STREAMING = "streaming"
    """An SSE response started: body chunks feed the pump."""
    ENDING = "ending"
    """The SSE stream took its last body (final, an error, or the app returned): what is held,
    then a terminal error event if any, is being written; later body chunks are dropped."""
    COMPLETE = "complete"
    """The final body message has gone (or is going) to the server."""
    STOPPING = "stopping"
    """Decided to stop the app; waiting for it to leave ``send()`` to tell it."""
    TOLD = "told"
    """``receive()`` answers ``http.disconnect``; the app's task is cancelled, or will be when
    its grace runs out; its ``send()`` drops messages until it has heard, then raises."""


STOPPED: Final = frozenset((Phase.STOPPING, Phase.TOLD))
"""The phases after the middleware decided to stop the app."""
