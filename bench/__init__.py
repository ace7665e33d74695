"""streamhop's benchmarks, one module per benchmark, run from the repository root.

Run one as ``.venv/bin/python -m bench.<module>`` (``bench.peers``, ``bench.throughput``,
``bench.spike.run``, ...); each has ``--help``. Shared pieces: :mod:`bench.processes` starts and
stops every process a benchmark measures, :mod:`bench.procfs` reads CPU and memory from
``/proc``, :mod:`bench.peers_client` is the load client. Nothing here is imported by
``streamhop.sidecar`` or ``streamhop.middleware``.
"""
