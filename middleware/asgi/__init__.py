"""The ASGI edge of the engine: :class:`~.middleware.StreamHopMiddleware` wraps an app's
``send``/``receive``, one :class:`~.responder.Responder` per request.

Modules, in the order a request meets them: :mod:`.middleware` (the object you mount),
:mod:`.options` (its options, checked once), :mod:`.responder` (one request as a state machine
over :mod:`.phase`), :mod:`.receive` (the one reader of the server's ``receive``),
:mod:`.rechunk` (the send side of an SSE response, around the pump), :mod:`.record` (metrics
and the log line), :mod:`.errors` (:class:`~.errors.ClientDisconnectedError`)."""
