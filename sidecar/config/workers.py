"""``[server] workers`` / ``--workers``: how many worker processes serve the proxy port.

An integer (at least 1) or ``"auto"``: the CPUs this process may run on, the fewer of its
scheduler affinity (``os.sched_getaffinity``, what ``taskset`` and a cpuset limit) and its
cgroup v2 CPU quota (``cpu.max``, what a Kubernetes CPU limit sets), rounded up, never below 1.
``os.cpu_count()`` would count the host's CPUs, which a container may not use.

``workers > 1`` with ``[resume] enabled`` on the ``memory`` store is refused: each worker would
keep its own logs, and a reconnect (resume, stop, follow) lands on any worker.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config.model import ResumeConfig, ServerConfig

CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse_workers(key: str, value: Any) -> int:
    """``value`` as a worker count: an integer >= 1, or ``"auto"`` (:func:`available_cpus`).

    Args:
        key: the dotted key or flag, for the error (``server.workers``, ``--workers``).
        value: from TOML (int or str) or the command line (str).

    Raises:
        ConfigError: not an integer >= 1 nor ``"auto"``.
    """
    if value == "auto":
        return available_cpus()
    if key.startswith("--") and isinstance(value, str) and value.isdigit():
        value = int(value)  # a flag's value is a string; TOML's "2" stays an error
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, f'expected an integer >= 1 or "auto", got {value!r}')
    return value


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path | None = None) -> int:
    """The CPUs this process may use: affinity, capped by the cgroup v2 quota; at least 1.

    Args:
        cgroup_root: where the cgroup v2 hierarchy is mounted.
        proc_cgroup: this process's cgroup file (default ``/proc/self/cgroup``).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup or Path("/proc/self/cgroup"))
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path, proc_cgroup: Path) -> float | None:
    """The tightest ``cpu.max`` quota (in CPUs) from this process's cgroup up to the root, or
    ``None`` when there is none (``max``, cgroup v1, no file)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    # cgroup v2 has one line "0::/path"; in a container's namespace it is often "0::/".
    own = next((line[3:] for line in lines if line.startswith("0::")), "/")
    folder = cgroup_root / own.lstrip("/")
    quotas: list[float] = []
    for where in (folder, *folder.parents):
        if not where.is_relative_to(cgroup_root):
            break
        try:
            limit, period = (where / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if limit != "max" and float(period) > 0:
            quotas.append(float(limit) / float(period))
    return min(quotas) if quotas else None


def check_workers(server: ServerConfig, resume: ResumeConfig) -> None:
    """Refuse several workers with a per-process resume store.

    Raises:
        ConfigError: ``workers > 1`` and ``[resume] enabled`` with ``store = "memory"``.
    """
    if server.workers > 1 and resume.enabled and resume.store == "memory":
        raise ConfigError(
            "server.workers",
            f'{server.workers} workers cannot share [resume] store = "memory" (each worker '
            "would hold its own logs, and a reconnect, stop or follow lands on any worker): "
            'set [resume] store = "redis", or workers = 1',
        )
