"""How busy the machine is with other work, from /proc (torch-free, Linux; None elsewhere).

Timing commands (``sdft bench``) run on machines that others share: a figure taken while
another process holds a core is slow and noisy. :class:`CpuUseWindow` measures the CPU time
every *other* process used between its start and its finish (the system's busy time from
``/proc/stat`` less this process's own from ``/proc/self/stat``), so the caller can say
"measured on a busy machine" beside its figures. :func:`measure_other_cpu_use` is the same
over a short window of its own, for a check before measuring.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from engine.threads import usable_cpus  # one notion of the CPUs this process may use

# Others using this much of a core or more makes a timing untrustworthy; on large machines a
# tenth of the CPUs (a timing that uses few threads tolerates some company).
BUSY_MIN_CORES = 0.5
BUSY_SHARE_OF_CPUS = 0.1

Read = Callable[[str], str]


def _read(path: str) -> str:
    with open(path, encoding="ascii") as fh:
        return fh.read()


def system_busy_ticks(proc_stat: str) -> int:
    """Clock ticks all CPUs spent not idle, from /proc/stat's first line (user nice system idle
    iowait irq softirq steal ...; guest time is already inside user)."""
    fields = proc_stat.splitlines()[0].split()
    if fields[0] != "cpu":
        raise ValueError("not /proc/stat")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return user + nice + system + irq + softirq + steal


def process_ticks(proc_pid_stat: str) -> int:
    """Clock ticks a process (all its threads) spent on CPUs: utime + stime of /proc/PID/stat.
    The command name may hold spaces and parentheses, so fields are counted after the last ')'."""
    rest = proc_pid_stat.rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])   # fields 14 and 15 of the whole line


@dataclass(frozen=True)
class OtherCpuUse:
    """Other processes' CPU use over a window, in cores (1.0 = one CPU kept busy throughout)."""
    other_cores: float
    cpus: int
    window_s: float
    load_average_1m: float | None

    @property
    def busy(self) -> bool:
        return self.other_cores >= max(BUSY_MIN_CORES, BUSY_SHARE_OF_CPUS * self.cpus)

    def warning(self) -> str | None:
        """One line for the user when the machine was busy, else None."""
        if not self.busy:
            return None
        load = f", load average {self.load_average_1m:.1f}" if self.load_average_1m is not None else ""
        return (f"the machine was busy while measuring: other processes used {self.other_cores:.1f} of "
                f"{self.cpus} CPUs{load}; timings are slower and noisier than on a quiet machine")


class CpuUseWindow:
    """Start it before measuring, ``finish()`` after: other processes' CPU use in between."""

    def __init__(self, *, read: Read = _read, clock: Callable[[], float] = time.monotonic):
        self.read, self.clock = read, clock
        self.ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start = self._sample()

    def _sample(self) -> tuple[float, int, int] | None:
        try:
            return self.clock(), system_busy_ticks(self.read("/proc/stat")), process_ticks(self.read("/proc/self/stat"))
        except (OSError, ValueError, IndexError):
            return None

    def finish(self) -> OtherCpuUse | None:
        """None where /proc cannot be read (not Linux) or no time passed."""
        end = self._sample()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        seconds = end[0] - self.start[0]
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return OtherCpuUse(max(0.0, others / self.ticks_per_s / seconds), usable_cpus(), seconds,
                           self._load_average())

    def _load_average(self) -> float | None:
        try:
            return float(self.read("/proc/loadavg").split()[0])
        except (OSError, ValueError, IndexError):
            return None


def measure_other_cpu_use(window_s: float = 0.5, *, read: Read = _read,
                          sleep: Callable[[float], None] = time.sleep,
                          clock: Callable[[], float] = time.monotonic) -> OtherCpuUse | None:
    """Other processes' CPU use over the next ``window_s`` seconds (this process sleeps)."""
    window = CpuUseWindow(read=read, clock=clock)
    sleep(window_s)
    return window.finish()
