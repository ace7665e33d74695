"""``[server] workers > 1``: a supervisor process and N worker processes on one proxy port.

:mod:`.supervisor` starts the workers (``streamhop serve --worker``, each binding the proxy
port with ``SO_REUSEPORT``), restarts one that dies, drains them all on SIGTERM and replaces
them on SIGHUP; :mod:`.admin` is the supervisor's admin listener (``/readyz`` ready when every
worker is, ``/metrics`` of all workers through prometheus-client's multiprocess mode);
:mod:`.metrics` the supervisor's own families. ``workers = 1`` never imports this package.
"""

from __future__ import annotations

from streamhop.sidecar.supervise.supervisor import Supervisor

__all__ = ["Supervisor"]
