"""engine/start_up_gc.py: `sdft train` starts with Python's cyclic collector paused and trains with it
running again, the start-up's objects frozen; a caller that passes argv keeps its own collector."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import make_run

REPO = Path(__file__).resolve().parents[1]

# Runs the console entry point as the `sdft` script does (argv from sys.argv) and records the
# collector's state when the first step is about to be taken and after the command.
PROBE = """
import gc, json, sys
from engine import cli
from engine.train.trainer import Trainer

seen = {}
loop = Trainer.loop

def recording_loop(self, hooks):
    seen["enabled_in_loop"] = gc.isenabled()
    seen["frozen_in_loop"] = gc.get_freeze_count()
    return loop(self, hooks)

Trainer.loop = recording_loop
original_run = Trainer.run

def recording_run(self):
    seen["enabled_before_run"] = gc.isenabled()
    return original_run(self)

Trainer.run = recording_run
sys.argv = ["sdft", *sys.argv[1:]]
code = cli.main()
seen["code"] = code
print("SEEN" + json.dumps(seen))
"""


def _probe(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(REPO),
                               "PYTHONPATH": str(REPO / "tests")}, timeout=300)
    line = next((x for x in done.stdout.splitlines() if x.startswith("SEEN")), None)
    assert line, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(line[4:])


@pytest.mark.slow
def test_a_headless_run_starts_paused_and_trains_with_the_collector_on(tmp_path, tiny_sd1):
    run = make_run(tmp_path, tiny_sd1, steps=2, cache="memory")
    seen = _probe("train", str(run))
    assert seen["code"] == 0
    assert seen["enabled_before_run"] is False, "start-up ran with the collector paused"
    assert seen["enabled_in_loop"] is True, "the training loop runs with the collector on"
    assert seen["frozen_in_loop"] > 10_000, "the start-up's objects are frozen (later passes skip them)"


def test_resume_without_a_pause_changes_nothing():
    script = ("import gc; from engine.start_up_gc import pause_collector, resume_collector\n"
              "before = gc.get_freeze_count(); resume_collector()\n"
              "untouched = (gc.isenabled(), gc.get_freeze_count() == before)\n"
              "gc.disable(); pause_collector(); resume_collector()\n"
              "kept_off = not gc.isenabled()\n"   # a program that turned it off itself keeps it off
              "gc.enable(); pause_collector(); paused = not gc.isenabled(); resume_collector()\n"
              "print(untouched, kept_off, paused, gc.isenabled(), gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["(True,", "True)", "True", "True", "True", "True"]


def test_a_caller_passing_argv_keeps_its_collector(tmp_path, tiny_sd1):
    import gc

    from engine.cli import main

    run = make_run(tmp_path, tiny_sd1, steps=1, cache="memory")
    frozen = gc.get_freeze_count()
    assert main(["train", str(run)]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen
