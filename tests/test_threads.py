"""engine/threads.py: torch's CPU thread count leaves a CPU free and respects an explicit choice."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine import threads


def test_one_cpu_is_left_for_the_loader_and_the_ui():
    assert threads.compute_threads(cpus=2, torch_default=2) == 1
    assert threads.compute_threads(cpus=16, torch_default=8) == 8    # never more than torch's own
    assert threads.compute_threads(cpus=8, torch_default=8) == 7
    assert threads.compute_threads(cpus=1, torch_default=1) == 1


def test_an_environment_variable_wins():
    assert threads.choose(2, {"OMP_NUM_THREADS": "2"}, cpus=2, defaults={2}) == (None, "OMP_NUM_THREADS=2")
    assert threads.choose(4, {"MKL_NUM_THREADS": "4"}, cpus=8, defaults={8})[0] is None


def test_a_count_the_program_set_wins():
    threads_to_set, reason = threads.choose(3, {}, cpus=8, defaults={8, 4})
    assert threads_to_set is None and "torch.set_num_threads" in reason


def test_torch_default_is_lowered():
    assert threads.choose(2, {"OMP_NUM_THREADS": " "}, cpus=2, defaults={2, 1})[0] == 1
    assert threads.choose(1, {}, cpus=1, defaults={1})[0] is None   # nothing to change


def test_container_quota_caps_usable_cpus():
    files = {threads.CGROUP_V2_MAX: "150000 100000\n"}

    def read(path):
        if path not in files:
            raise FileNotFoundError(path)
        return files[path]
    assert threads.cpu_quota(read) == 1.5
    assert threads.usable_cpus(read) <= 2
    files[threads.CGROUP_V2_MAX] = "max 100000\n"
    assert threads.cpu_quota(read) is None
    files.clear()
    files.update({threads.CGROUP_V1_QUOTA[0]: "200000\n", threads.CGROUP_V1_QUOTA[1]: "100000\n"})
    assert threads.cpu_quota(read) == 2.0
    files[threads.CGROUP_V1_QUOTA[0]] = "-1\n"
    assert threads.cpu_quota(read) is None


PROBE = """
import os, torch
from engine import threads
os.sched_setaffinity(0, set(list(os.sched_getaffinity(0))[:1]) | set(list(os.sched_getaffinity(0))[1:2]))
torch.set_num_threads({preset}) if {preset} else None
first = threads.apply_thread_policy()
torch.set_num_threads(1) if first.changed else None
again = threads.apply_thread_policy()
print(torch.get_num_threads(), first.changed, again is first, first.reason)
"""


def run_probe(preset: int, env_threads: str | None) -> list[str]:
    import os
    env = {k: v for k, v in os.environ.items() if k not in threads.EXPLICIT_ENV}
    if env_threads:
        env["OMP_NUM_THREADS"] = env_threads
    out = subprocess.run([sys.executable, "-c", PROBE.format(preset=preset)], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return out.stdout.split(maxsplit=3)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="needs CPU affinity")
def test_a_real_process_gets_the_policy_once_and_keeps_an_explicit_choice():
    import os
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    count, changed, same, _ = run_probe(0, None)
    assert changed == "True" and count == "1" and same == "True"
    count, changed, _, reason = run_probe(0, "2")
    assert changed == "False" and count == "2" and "OMP_NUM_THREADS=2" in reason
