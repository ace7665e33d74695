"""What a benchmark reads from ``/proc``: CPU time and peak RSS of a process tree, machine facts.

The one CPU sampler of the benchmarks (:class:`TreeCpu`, used by bench/peers.py,
bench/peers_sustained.py, bench/middleware.py and bench/spike/run.py). bench/throughput.py keeps
``psutil``'s ``cpu_times()`` snapshots of one process instead: it prints the user / kernel split,
which ``schedstat`` does not give, and its sidecar has no child processes.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import psutil

_VMHWM = re.compile(r"VmHWM:\s+(\d+) kB")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live descendants; empty if ``pid`` is gone."""
    try:
        root = psutil.Process(pid)
        return [pid, *(p.pid for p in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def tree_tasks(pid: int) -> dict[tuple[int, int], int]:
    """CPU time so far of every thread of ``pid`` and its descendants, in ns, keyed by
    ``(pid, tid)``, from ``/proc/PID/task/TID/schedstat`` (time on CPU: user and system alike;
    the ticks of ``utime``/``stime`` are 10 ms coarse, too coarse for one stream of 200 events
    at ~10 µs each)."""
    tasks: dict[tuple[int, int], int] = {}
    for each in tree_pids(pid):
        try:
            for task in os.listdir(f"/proc/{each}/task"):
                with open(f"/proc/{each}/task/{task}/schedstat") as f:
                    tasks[each, int(task)] = int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread or process that ended while we read
    return tasks


class TreeCpu:
    """CPU seconds a process tree uses over an interval, threads that come and go included.

    Two snapshots of the live threads undercount a tree whose threads or worker processes end
    within the interval (their time leaves the sum: LiteLLM's figure came out negative that
    way). This samples every thread's ``schedstat`` every ``every_s`` seconds on a background
    thread and keeps, per thread, the first and last value seen: a thread first seen after the
    start counts from 0 (it was born in the interval), one that ended counts up to its last
    sample (at most ``every_s`` of its time is lost). Reaped children's ``cutime`` is not used,
    so nothing is counted twice.

    Use as a context manager; :attr:`seconds` holds the result after exit. ``pid`` ``None``
    measures nothing (0 s): a target without a process of its own.
    """

    def __init__(self, pid: int | None, every_s: float = 0.1) -> None:
        self.pid = pid
        self.every_s = every_s
        self.seconds = 0.0
        self._first: dict[tuple[int, int], int] = {}
        self._last: dict[tuple[int, int], int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<TreeCpu pid={self.pid} threads={len(self._first)} seconds={self.seconds:.3f}>"

    def _sample(self, *, initial: bool = False) -> None:
        if self.pid is None:
            return
        for key, ns in tree_tasks(self.pid).items():
            if key not in self._first:
                self._first[key] = ns if initial else 0
            self._last[key] = ns

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> TreeCpu:
        self._sample(initial=True)
        self._thread = threading.Thread(target=self._run, name="tree-cpu", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        total = sum(self._last[key] - first for key, first in self._first.items())
        self.seconds = total / 1e9


def peak_rss_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of ``pid``, in MiB; NaN when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    match = _VMHWM.search(status)
    return int(match.group(1)) / 1024 if match else float("nan")


def tree_peak_rss_mb(pid: int) -> float:
    """Sum of the peak RSS (VmHWM) of ``pid`` and its live descendants, in MiB."""
    pids = tree_pids(pid)
    if not pids:
        return float("nan")
    total = 0.0
    for each in pids:
        rss = peak_rss_mb(each)
        if rss == rss:  # not NaN: a process that ended while we read counts nothing
            total += rss
    return total


def loadavg() -> tuple[float, float, float]:
    """The load averages (1, 5, 15 min), from ``/proc/loadavg``."""
    parts = Path("/proc/loadavg").read_text().split()
    return float(parts[0]), float(parts[1]), float(parts[2])


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, or ``unknown``."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"
