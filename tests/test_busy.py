"""engine/busy.py: other processes' CPU use from /proc, for warnings beside timings."""

from __future__ import annotations

import sys

import pytest

from engine import busy

STAT = "cpu  {user} 0 {system} 5000 7 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
SELF = "4242 (python (bench) x) R 1 2 3 4 5 6 7 8 9 10 {utime} {stime} 0 0 20 0 3 0 100 0 0\n"


class FakeProc:
    """/proc as a sequence of samples; each _sample reads stat then self/stat."""

    def __init__(self, samples, load="3.25 2.00 1.00 2/100 999"):
        self.samples, self.load, self.index = list(samples), load, 0

    def read(self, path):
        if path == "/proc/loadavg":
            return self.load
        system, own = self.samples[self.index // 2]
        self.index += 1
        if path == "/proc/stat":
            return STAT.format(user=system, system=0)
        return SELF.format(utime=own, stime=0)


def clock_of(*times):
    values = iter(times)
    return lambda: next(values)


def test_process_ticks_reads_past_a_name_with_spaces_and_parentheses():
    assert busy.process_ticks(SELF.format(utime=30, stime=12)) == 42


def test_system_busy_ticks_leave_out_idle_and_iowait():
    assert busy.system_busy_ticks("cpu  10 1 5 900 50 2 3 4 0 0\n") == 10 + 1 + 5 + 2 + 3 + 4


def test_others_are_the_system_busy_time_less_this_process(monkeypatch):
    monkeypatch.setattr(busy, "usable_cpus", lambda: 2)
    ticks = busy.CpuUseWindow().ticks_per_s
    # over 2 s the system was busy 3 s of CPU, 1 s of it this process: others kept one core busy
    proc = FakeProc([(0, 0), (3 * ticks, 1 * ticks)])
    window = busy.CpuUseWindow(read=proc.read, clock=clock_of(10.0, 12.0))
    use = window.finish()
    assert use.other_cores == pytest.approx(1.0)
    assert use.cpus == 2 and use.load_average_1m == 3.25 and use.busy
    assert "other processes used 1.0 of 2 CPUs, load average 3.2" in use.warning()


def test_a_quiet_machine_gives_no_warning(monkeypatch):
    monkeypatch.setattr(busy, "usable_cpus", lambda: 2)
    ticks = busy.CpuUseWindow().ticks_per_s
    proc = FakeProc([(0, 0), (2 * ticks, 2 * ticks)])   # only this process ran
    use = busy.CpuUseWindow(read=proc.read, clock=clock_of(0.0, 2.0)).finish()
    assert use.other_cores == 0.0 and not use.busy and use.warning() is None


def test_the_threshold_grows_with_the_machine():
    assert busy.OtherCpuUse(0.6, 2, 1.0, None).busy
    assert not busy.OtherCpuUse(0.6, 64, 1.0, None).busy   # a tenth of 64 CPUs is 6.4
    assert busy.OtherCpuUse(7.0, 64, 1.0, None).busy


def test_unreadable_proc_gives_none():
    def missing(path):
        raise FileNotFoundError(path)
    assert busy.measure_other_cpu_use(0.0, read=missing, sleep=lambda s: None) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_the_real_proc_gives_a_figure_within_the_machine():
    use = busy.measure_other_cpu_use(0.2)
    assert use is not None and use.window_s > 0
    assert 0.0 <= use.other_cores <= use.cpus * 1.5 + 1   # ticks are coarse over a short window
