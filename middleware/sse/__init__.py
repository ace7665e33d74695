"""The SSE wire: bytes in (:mod:`.decoder`), events (:mod:`.events`), bytes out (:mod:`.encoder`).

WHATWG HTML Standard, "Server-sent events" §9.2. Sans-IO: no sockets, no event loop.
"""
