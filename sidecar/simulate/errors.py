"""The simulator's exceptions, part of streamhop's one hierarchy."""

from __future__ import annotations

from streamhop.middleware.errors import StreamHopError


class SimulatorError(StreamHopError):
    """Base class of every error the simulator raises on purpose."""


class SimulatorConfigError(SimulatorError, ValueError):
    """An invalid setting: ``key`` names the field (or ``x-sim-*`` header), ``reason`` what was
    expected and what came."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid {key}: {reason}")
        self.key = key
        self.reason = reason


class BadRequestError(SimulatorError):
    """The request body cannot be served; becomes a 400 in the endpoint's error shape.

    Attributes:
        message: what was expected and what came.
        param: the offending body field, if one.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ClientClosedError(SimulatorError):
    """The client closed the connection before the response was complete."""
