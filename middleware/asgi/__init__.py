"""The ASGI edge of the engine: :class:`~.middleware.StreamHopMiddleware` wraps an app's
``send``/``receive``; :mod:`.receive` is the one reader of the server's ``receive``."""
