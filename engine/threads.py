"""Torch's CPU thread counts, chosen once per process when a run starts.

torch starts one compute thread per core and its threads wait for each other at every
operation. A training process also runs its batch loader thread (engine/prefetch.py) and, in
the wizard, the UI; when those or another process take a core, the compute threads stall at
each barrier (measured: per-step times swinging twenty-fold on a shared 2-core machine). So
sdft leaves one CPU free: compute threads = usable CPUs - 1 (at least 1, at most torch's own
default), where usable CPUs count the process's CPU affinity and a container's CPU quota.

An explicit choice wins: ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the environment, or a
count the program set with ``torch.set_num_threads`` before the run (anything but torch's own
default).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Mapping

EXPLICIT_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP_V2_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_QUOTA = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _read(path: str) -> str:
    with open(path, encoding="ascii") as fh:
        return fh.read()


def cpu_quota(read: Callable[[str], str] = _read) -> float | None:
    """CPUs a container's quota allows (cgroup v2 cpu.max, or v1 cfs quota/period), None if unlimited."""
    try:
        quota, period = read(CGROUP_V2_MAX).split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota, period = (int(read(path).strip()) for path in CGROUP_V1_QUOTA)
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus(read: Callable[[str], str] = _read) -> int:
    """CPUs this process can actually use: its affinity, capped by a container's quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cpu_quota(read)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def compute_threads(cpus: int, torch_default: int) -> int:
    """The intra-op thread count for a training process on ``cpus`` usable CPUs."""
    return max(1, min(torch_default, cpus - 1))


def torch_default_candidates() -> set[int]:
    """Counts torch may have picked by itself: one per logical CPU, per physical core (half, with
    two hardware threads per core), or per CPU of the affinity mask."""
    logical = os.cpu_count() or 1
    candidates = {logical, max(1, logical // 2)}
    try:
        candidates.add(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        pass
    return candidates


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    interop_threads: int
    changed: bool
    reason: str

    def describe(self) -> str:
        return f"CPU threads: {self.threads} ({self.reason})"


_applied: ThreadChoice | None = None


def choose(current: int, env: Mapping[str, str], cpus: int, defaults: set[int]) -> tuple[int | None, str]:
    """(threads to set or None to leave torch as it is, why): a pure function of its inputs."""
    named = [name for name in EXPLICIT_ENV if env.get(name, "").strip()]
    if named:
        return None, f"{named[0]}={env[named[0]].strip()}"
    if current not in defaults:
        return None, "set by the program (torch.set_num_threads)"
    threads = compute_threads(cpus, current)
    if threads == current:
        return None, f"one per usable CPU, {cpus} CPU{'s' if cpus != 1 else ''}"
    return threads, f"{cpus} usable CPUs, one left for the loader, the UI and other work"


def apply_thread_policy(env: Mapping[str, str] | None = None) -> ThreadChoice:
    """Set torch's thread counts once per process (later calls return the first choice)."""
    global _applied
    if _applied is not None:
        return _applied
    import torch

    env = os.environ if env is None else env
    current = torch.get_num_threads()
    threads, reason = choose(current, env, usable_cpus(), torch_default_candidates())
    if threads is not None:
        torch.set_num_threads(threads)
        _set_interop(torch, 1)   # sdft runs no inter-op parallel work; fewer idle threads to wake
    _applied = ThreadChoice(torch.get_num_threads(), torch.get_num_interop_threads(), threads is not None, reason)
    return _applied


def _set_interop(torch, count: int) -> None:
    try:
        torch.set_num_interop_threads(count)
    except RuntimeError:   # only possible before any inter-op work started; then keep torch's
        pass
