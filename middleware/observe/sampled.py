"""Gauges read from a function, in one process or several.

``Gauge.set_function`` computes the value when the registry is collected, in the process that
collects it. In prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set: the
sidecar's workers, ``[server] workers > 1``) another process, the supervisor, reads the values
the workers wrote to their files, so a function set in a worker is never called. A
:class:`SampledGauge` keeps ``set_function`` as it is in one process; in multiprocess mode it
keeps the function and writes its value when the worker calls :func:`sample_gauges` (once a
second), so a scrape sees it at most that late.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

from prometheus_client import Gauge

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's switch to multiprocess mode, read when it is imported."""

_sampled: weakref.WeakSet[SampledGauge] = weakref.WeakSet()


def multiprocess_mode() -> bool:
    """Whether prometheus-client writes this process's values to files (for a supervisor)."""
    return MULTIPROC_ENV in os.environ


# The wheel's build type-checks without the runtime dependencies: Gauge is Any there.
class SampledGauge(Gauge):  # type: ignore[misc, unused-ignore]
    """A :class:`~prometheus_client.Gauge` whose ``set_function`` also works in multiprocess
    mode (see the module docstring). Give it a ``multiprocess_mode`` (``livesum``: the workers'
    values added up, dead workers left out)."""

    _sample: Callable[[], float] | None = None

    def set_function(self, f: Callable[[], float]) -> None:
        """Read the value from ``f``: at collection in one process, at :func:`sample_gauges`
        in multiprocess mode."""
        if not multiprocess_mode():
            super().set_function(f)
            return
        self._sample = f
        _sampled.add(self)


def sample_gauges() -> None:
    """Write the value of every :class:`SampledGauge` of this process that has a function (a
    worker calls it periodically; nothing to do outside multiprocess mode)."""
    for gauge in list(_sampled):
        if gauge._sample is not None:
            gauge.set(gauge._sample())
