"""How a WebSocket's streams sit in the process's registry of open streams
(:class:`~..upstream.registry.SidecarState`): a generation in the stop index, a resume replay
as an open stream that counts toward ``max_streams`` and that shutdown ends."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamhop.sidecar.websocket.generation import Generation
    from streamhop.sidecar.websocket.session import Session


class GenerationStop:
    """A generation's entry in the stop index
    (:attr:`~..upstream.registry.SidecarState.running`): a stop ends it through its session, as
    ``cancel`` would."""

    __slots__ = ("gen", "session")

    def __init__(self, session: Session, gen: Generation) -> None:
        self.session = session
        self.gen = gen

    def stop(self, reason: str) -> None:
        self.session.stop(self.gen, reason)


class ReplaySlot:
    """A WebSocket resume replay as an open stream (:class:`~..upstream.registry.Stoppable`):
    it counts toward ``max_streams`` as an HTTP resume does, and shutdown ends it."""

    __slots__ = ("task",)

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.task = task

    def stop(self, reason: str) -> None:
        """End the replay (``shutdown``): the socket itself is closed by the drain."""
        self.task.cancel()
