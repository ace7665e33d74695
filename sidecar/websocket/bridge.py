"""The WebSocket bridge: ``Upgrade: websocket`` on any route path opens a duplex session.

One :class:`_Session` per socket. Its own task reads client frames; each ``request`` runs as a
:class:`~.generation.Generation` in a task of its own. At most one generation runs per socket:

* ``cancel`` cancels the running generation's task, waits for it (at most ``CUTOVER_WAIT_S``),
  then sends ``done`` ``cancelled``;
* a ``request`` while one runs **cuts over**: the same, with ``done`` ``interrupted``, then the new
  generation starts. Waiting first means no event of the old generation follows its ``done``;
* the socket closing cancels the running generation (``client_disconnect``);
* ``DELETE <prefix>/streamhop/v1/streams/<id>`` (the HTTP stop, same caller binding) stops the
  running generation like ``cancel``: ``done`` ``cancelled`` (cancel reason ``stop``).

Sockets are bounded, not only generations: past ``[server] max_websockets`` open sockets the
handshake is refused with 503 (the denial response extension; a server without it answers 403),
and a socket with nothing running that sends nothing for ``websocket_idle_timeout_s`` is closed
(1001), so idle sockets cannot pile up unseen.

Sends are serialized by one lock per socket (one send in flight), so the reader's ``error``
messages never interleave with a batch of events. Backpressure is the pump's: a client that does
not read makes ``send`` block, merging continues, the pump stops reading upstream past
``max_pending_bytes``, and after ``stall_timeout_s`` the generation is dropped (``stall``).

Close codes (RFC 6455 §7.4.1): 1008 no route or an invalid ``X-Streamhop-*`` handshake header, or
a stalled client; 1001 while draining or idle; 1003 for a binary frame; 1009 for a frame over
``[server] max_request_bytes``.

Deliberate divergences from the HTTP proxy: the handshake's ``Origin``, ``Accept-Encoding`` and
``Sec-WebSocket-*`` headers describe the WebSocket, not the generation, so they are not forwarded
(a browser ``Origin`` would make some providers apply CORS rules meant for browsers). At shutdown
uvicorn closes open WebSockets at once with 1012 (it has no drain for them); their generations
are cancelled with reason ``shutdown``.
"""

from __future__ import annotations

import functools
from collections.abc import Coroutine
from typing import Any

from streamhop.sidecar.asgi import Message, Receive, Scope, Send, json_error
from streamhop.sidecar.upstream.edge import EdgeContext
from streamhop.sidecar.websocket.generation import Generation
from streamhop.sidecar.websocket.session import Session


class WebSocketBridge:
    """ASGI endpoint for ``websocket`` scopes; per-socket state lives in a :class:`Session`.

    Args:
        edge: what both edges share (:class:`~..upstream.edge.EdgeContext`): the HTTP proxy's
            own, so a log a generation writes here can be resumed over HTTP and the other way
            round, and a stop over HTTP finds a generation here.
    """

    def __init__(self, edge: EdgeContext) -> None:
        self.edge = edge
        self.sessions: set[Session] = set()
        """Open sockets, from the handshake on (what ``max_websockets`` counts)."""
        edge.state.on_drain.append(self.handoff_all)
        edge.metrics.websockets_open.set_function(lambda: len(self.sessions))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.edge.config.server.max_websockets
        if len(self.sessions) >= limit:
            self.edge.metrics.websocket_refused.labels("max_websockets").inc()
            message = f"streamhop is at max_websockets={limit}"
            await _refuse(scope, receive, send, "too_many_websockets", message)
            return
        session = Session(self.edge, scope, receive, send)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    def handoff_all(self) -> list[Coroutine[Any, Any, Any]]:
        """Draining with a shared resume store: send each socket with a logged generation a
        ``reconnect`` message (:meth:`~..upstream.edge.EdgeContext.handoffs`); the generation
        goes on into the log for the client to ``resume`` on another replica. Returns the
        handoffs, for the server to run."""
        return self.edge.handoffs(
            functools.partial(session.handoff, gen)
            for session in list(self.sessions)
            if isinstance(gen := session.current, Generation)
            and gen.log is not None
            and session.running()
        )


async def _refuse(scope: Scope, receive: Receive, send: Send, code: str, message: str) -> None:
    """Refuse a handshake before accepting it: ``503`` with ``Retry-After: 1`` and a JSON
    error (the ASGI WebSocket denial response), or a plain refusal (403) from a server that
    cannot send one."""
    if (await receive())["type"] != "websocket.connect":
        return
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1013})
        return

    async def denial(response: Message) -> None:
        await send({**response, "type": "websocket." + response["type"]})

    await json_error(denial, 503, None, code, message, retry_after=True)
