"""How many CPUs this process may really use: its affinity and its cgroup's CPU quota."""

from __future__ import annotations

import math
import os


def usable_cpus() -> int:
    """The CPUs this process may really use: its affinity and its cgroup quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        count = min(count, limit)
    return max(1, count)


_CGROUP_V1_FOLDERS = ("cpu", "cpu,cpuacct")


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> int | None:
    """The CPUs the cgroup CPU quota under ``root`` allows, rounded up; None if there is no quota.

    Reads cgroup v2 (``cpu.max``: ``"max 100000"`` or ``"150000 100000"``) and cgroup v1
    (``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``, quota -1 = unlimited; also under
    ``cpu,cpuacct/``); the smallest limit found wins. Only ``root`` itself is read, which in a
    container is the container's own cgroup. Missing or unreadable files count as no quota.
    """
    limits = []
    cpu_max = _read_numbers(os.path.join(root, "cpu.max"), allow_max=True)
    if cpu_max is not None and len(cpu_max) >= 2:
        limits.append(_cpus(cpu_max[0], cpu_max[1]))
    for folder in _CGROUP_V1_FOLDERS:
        quota = _read_numbers(os.path.join(root, folder, "cpu.cfs_quota_us"))
        period = _read_numbers(os.path.join(root, folder, "cpu.cfs_period_us"))
        if quota and period:
            limits.append(_cpus(quota[0], period[0]))
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def _cpus(quota: int | None, period: int | None) -> int | None:
    """CPUs for a quota per period; None when unlimited (-1, "max") or nonsense."""
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _read_numbers(path: str, allow_max: bool = False) -> list[int | None] | None:
    """The whitespace-separated integers in ``path`` ("max" -> None when ``allow_max``); None if unreadable."""
    try:
        with open(path) as file:
            words = file.read().split()
        return [None if allow_max and word == "max" else int(word) for word in words]
    except (OSError, ValueError):
        return None
