"""``[server] workers`` and ``--workers``: an integer >= 1 or ``"auto"`` (the CPUs this process
may use: affinity, capped by the cgroup v2 quota)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config import config_from_dict, parse_workers
from streamhop.sidecar.config.workers import available_cpus

AFFINITY = len(os.sched_getaffinity(0))


def test_default_is_one_worker() -> None:
    assert config_from_dict({}).server.workers == 1


def test_integer_and_auto() -> None:
    assert config_from_dict({"server": {"workers": 3}}).server.workers == 3
    auto = config_from_dict({"server": {"workers": "auto"}}).server.workers
    assert 1 <= auto <= AFFINITY
    assert parse_workers("--workers", "auto") == auto
    assert parse_workers("--workers", "4") == 4


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "two", "2", ""])
def test_invalid_values_name_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"server\.workers: expected an integer >= 1 or"):
        config_from_dict({"server": {"workers": value}})


@pytest.mark.parametrize("value", ["0", "x", ""])
def test_invalid_flag_names_the_flag(value: str) -> None:
    with pytest.raises(ConfigError, match="--workers"):
        parse_workers("--workers", value)


def _cgroup(tmp_path: Path, quotas: dict[str, str]) -> tuple[Path, Path]:
    """A fake cgroup v2 tree (``{relative folder: cpu.max}``), this process in ``/pod/app``."""
    root = tmp_path / "cgroup"
    for folder, cpu_max in quotas.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(cpu_max + "\n")
    (root / "pod" / "app").mkdir(parents=True, exist_ok=True)
    own = tmp_path / "self-cgroup"
    own.write_text("0::/pod/app\n")
    return root, own


def test_auto_is_capped_by_the_tightest_quota_rounded_up(tmp_path: Path) -> None:
    root, own = _cgroup(tmp_path, {"pod": "150000 100000", "pod/app": "max 100000"})
    assert available_cpus(root, own) == min(AFFINITY, 2)
    root, own = _cgroup(tmp_path, {"pod/app": "50000 100000"})
    assert available_cpus(root, own) == 1  # half a CPU: still one worker


def test_auto_without_quota_is_the_affinity(tmp_path: Path) -> None:
    root, own = _cgroup(tmp_path, {"pod": "max 100000"})
    assert available_cpus(root, own) == AFFINITY
    assert available_cpus(tmp_path / "absent", tmp_path / "absent-file") == AFFINITY


def test_memory_resume_store_refused_with_workers() -> None:
    with pytest.raises(ConfigError, match=r'server\.workers: 2 workers .* store = "redis"'):
        config_from_dict({"server": {"workers": 2}, "resume": {"enabled": True}})
    # One worker, or resume off: as before.
    config_from_dict({"server": {"workers": 1}, "resume": {"enabled": True}})
    config_from_dict({"server": {"workers": 2}})
