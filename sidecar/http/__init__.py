"""The HTTP transport: the proxy endpoint (:mod:`.proxy`), one request's exchange
(:mod:`.exchange`), and small ASGI helpers (:mod:`.asgi`)."""
