"""TLS on the proxy listener (``[server] tls_cert_file`` / ``tls_key_file``): the certificate is
reloaded when its files change, as Kubernetes rotates a mounted Secret (an atomic swap of the
directory the files link into) and cert-manager renews it.

uvicorn builds the server context from the files at start; :class:`CertificateReloader` checks
the files' identity (inode, size, modification time) every :data:`RELOAD_CHECK_S` seconds and
loads the new pair into the same context with ``SSLContext.load_cert_chain``, so every handshake
after that presents the new certificate; connections already open keep theirs. A pair that does
not load (a half-written rotation, a key that does not match) is logged and the old one stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from typing import Final

logger = logging.getLogger("streamhop")

RELOAD_CHECK_S: Final = 1.0
"""How often the certificate files are looked at (two ``stat`` calls)."""

_Stamp = tuple[tuple[int, int, int], ...]


class CertificateReloader:
    """Reloads ``cert_file`` + ``key_file`` into ``context`` when either file changes.

    Args:
        context: the listener's server context (uvicorn's ``Config.ssl``).
        cert_file, key_file: PEM paths, as configured.
        interval_s: seconds between two checks.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        cert_file: str,
        key_file: str,
        interval_s: float = RELOAD_CHECK_S,
    ) -> None:
        self.context = context
        self.cert_file = cert_file
        self.key_file = key_file
        self.interval_s = interval_s
        self.reloads = 0
        """Pairs loaded since start."""
        self._stamp = self._current()
        self._refused: _Stamp | None = None  # a changed pair that did not load (logged once)

    def _current(self) -> _Stamp | None:
        try:
            stats = [os.stat(path) for path in (self.cert_file, self.key_file)]
        except OSError:
            return None  # mid-rotation: look again next time
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)

    def check(self) -> bool:
        """Load the pair if the files changed since the last load; True when it was loaded."""
        stamp = self._current()
        if stamp is None or stamp == self._stamp or stamp == self._refused:
            return False
        try:
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            self._refused = stamp
            logger.warning(
                "TLS certificate %s changed but does not load (%s); keeping the previous one",
                self.cert_file,
                exc,
            )
            return False
        self._stamp = stamp
        self.reloads += 1
        logger.info("TLS certificate reloaded from %s", self.cert_file)
        return True

    async def run(self) -> None:
        """Check every ``interval_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            self.check()
