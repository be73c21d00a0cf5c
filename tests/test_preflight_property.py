"""Property: a run file that `sdft train --check` accepts reaches its first optimizer step.

At least 200 run files are generated from the schema (every key of every section, valid and
near-valid values, kohya's spellings; seeded, so a failure reproduces). Each is checked with
check_run_file, the function behind --check; each accepted one is trained in-process on the
tiny model until its first optimizer step. A file that passes the check and fails to start
fails the test, with its text, so --check can be fixed.
"""

from __future__ import annotations

import random
import time

import pytest

from engine.control import RunControl
from engine.events import RunStarted
from engine.preflight.checks import check_run_file
from engine.runner import run_training
from preflight_helpers import make_fixture, random_run_file

FILES = 200
SEED = 20261202


class StopAfterFirstStep:
    """A sink that asks for a stop once training starts: the loop takes one optimizer step,
    then stops at the step boundary (no state written)."""

    def __init__(self, control: RunControl):
        self.control = control

    def emit(self, event) -> None:
        if isinstance(event, RunStarted):
            self.control.request_stop("first step reached", save_state=False)


@pytest.mark.slow
def test_every_file_check_accepts_reaches_its_first_step(tmp_path, tiny_sd1, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")        # W&B writes to disk, never asks to log in
    monkeypatch.setenv("WANDB_SILENT", "true")
    fixture = make_fixture(tmp_path, tiny_sd1)
    rng = random.Random(SEED)
    accepted, rejected, failures = 0, 0, []
    started = time.perf_counter()
    for index in range(FILES):
        path = tmp_path / f"run{index:03d}.toml"
        path.write_text(random_run_file(rng, index, fixture, tiny_sd1))
        config, problems = check_run_file(path)
        if any(p.severity == "error" for p in problems):
            rejected += 1
            continue
        accepted += 1
        control = RunControl()
        result = run_training(path, sink=StopAfterFirstStep(control), control=control)
        if result.status == "failed" or result.global_step < 1:
            failures.append(f"--- {path.name}: {result.status} at step {result.global_step}: {result.message}\n"
                            f"{path.read_text()}")
    elapsed = time.perf_counter() - started
    print(f"{FILES} files: {accepted} accepted and trained, {rejected} rejected by --check, {elapsed:.0f} s")
    assert not failures, f"{len(failures)} file(s) passed --check and failed to start:\n" + "\n".join(failures[:3]) + "\nall: " + " | ".join(f.splitlines()[0] for f in failures)
    # The generator must exercise both sides of the check.
    assert accepted >= FILES * 0.25 and rejected >= FILES * 0.25, (accepted, rejected)
