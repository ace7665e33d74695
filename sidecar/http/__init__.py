"""The HTTP transport: the proxy endpoint (:mod:`.proxy`), one request's exchange
(:mod:`.exchange`, its response :class:`~.exchange.Phase`) and the listener's TLS certificate
(:mod:`.tls`). The ASGI helpers both edges use are :mod:`streamhop.sidecar.asgi`."""
