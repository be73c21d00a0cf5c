"""Property: a run file that `sdft train --check` accepts reaches its first optimizer step.

At least 200 run files are generated from the schema (every key of every section, valid and
near-valid values, kohya's spellings; seeded, so a failure reproduces). Each is checked with
check_run_file, the function behind --check; each accepted one is trained in-process on the
tiny model until its first optimizer step. A file that passes the check and fails to start
fails the test, with its text, so --check can be fixed.

The files are drawn in one seeded sequence, then checked and trained in chunks of 20 (one test
each), so pytest-xdist spreads the training over its workers.
"""

from __future__ import annotations

import random

import pytest
from preflight_helpers import make_fixture, random_run_file

from engine.control import RunControl
from engine.events import RunStarted
from engine.preflight.checks import check_run_file
from engine.runner import run_training

FILES = 200
CHUNK = 20
SEED = 20261202


class StopAfterFirstStep:
    """A sink that asks for a stop once training starts: the loop takes one optimizer step,
    then stops at the step boundary (no state written)."""

    def __init__(self, control: RunControl):
        self.control = control

    def emit(self, event) -> None:
        if isinstance(event, RunStarted):
            self.control.request_stop("first step reached", save_state=False)


@pytest.fixture(scope="module")
def run_files(tmp_path_factory, tiny_sd1) -> list:
    """The 200 files, in the one sequence the seed draws, in one fixture folder per worker."""
    fixture = make_fixture(tmp_path_factory.mktemp("property"), tiny_sd1)
    rng = random.Random(SEED)
    paths = []
    for index in range(FILES):
        path = fixture / f"run{index:03d}.toml"
        path.write_text(random_run_file(rng, index, fixture, tiny_sd1))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def verdicts():
    """check_run_file's verdict per file (True: accepted), shared by the tests of a worker."""
    found: dict = {}

    def accepted(path) -> bool:
        if path not in found:
            _config, problems = check_run_file(path)
            found[path] = not any(p.severity == "error" for p in problems)
        return found[path]

    return accepted


@pytest.mark.slow
@pytest.mark.parametrize("first", range(0, FILES, CHUNK), ids=lambda first: f"files{first:03d}-{first + CHUNK - 1:03d}")
def test_every_file_check_accepts_reaches_its_first_step(run_files, verdicts, monkeypatch, first):
    monkeypatch.setenv("WANDB_MODE", "offline")        # W&B writes to disk, never asks to log in
    monkeypatch.setenv("WANDB_SILENT", "true")
    failures = []
    for path in run_files[first:first + CHUNK]:
        if not verdicts(path):
            continue
        control = RunControl()
        result = run_training(path, sink=StopAfterFirstStep(control), control=control)
        if result.status == "failed" or result.global_step < 1:
            failures.append(f"--- {path.name}: {result.status} at step {result.global_step}: {result.message}\n"
                            f"{path.read_text()}")
    assert not failures, f"{len(failures)} file(s) passed --check and failed to start:\n" + "\n".join(failures[:3]) + "\nall: " + " | ".join(f.splitlines()[0] for f in failures)


def test_the_files_exercise_both_sides_of_the_check(run_files, verdicts):
    accepted = sum(verdicts(path) for path in run_files)
    rejected = FILES - accepted
    print(f"{FILES} files: {accepted} accepted by --check, {rejected} rejected")
    assert accepted >= FILES * 0.25 and rejected >= FILES * 0.25, (accepted, rejected)
