"""Shared fixtures: tiny random SD models built once per session, in a temp folder."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# sdft's own caches (file hashes) go to a throw-away folder, not the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="sdft-test-cache-")

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.hookimpl(tryfirst=True)     # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    # The import-hygiene checks share one process (tests/fresh_process.py): one worker runs them.
    for item in items:
        if "in_fresh_process" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("fresh-process"))
    # Slow tests first (a stable sort: each keeps its place among its kind). pytest-xdist hands
    # out tests in this order as workers free up, so the long ones start early and the workers
    # finish together instead of one waiting on a long test handed out last.
    items.sort(key=lambda item: "slow" not in item.keywords)
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def in_fresh_process(tmp_path_factory):
    """``in_fresh_process(name)``: what the snippet registered as ``name`` did in a fresh
    interpreter (exit code, output), all snippets run by one process (tests/fresh_process.py)."""
    from fresh_process import run_snippets

    return run_snippets(tmp_path_factory.mktemp("fresh-process")).__getitem__


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory, tiny_sd1):
    """``plain_run(steps)``: tests/train_helpers.py's plain run file (tiny SD1, ``steps`` steps),
    trained once per worker and step count, for tests that compare with it or read its model.
    Returns ``(sink, result)``: a fresh ListSink holding the run's events (frozen values) and the
    RunResult. Its run folder is shared: read it, never write to it (copy it first)."""
    from train_helpers import make_run

    from engine.events import ListSink
    from engine.runner import run_training

    done: dict = {}

    def run(steps: int):
        if steps not in done:
            sink = ListSink()
            result = run_training(make_run(tmp_path_factory.mktemp(f"plain-{steps}-steps"), tiny_sd1, steps=steps),
                                  sink=sink)
            assert result.status == "completed", result.message
            done[steps] = (tuple(sink.events), result)
        events, result = done[steps]
        sink = ListSink()
        sink.events = list(events)
        return sink, result

    return run


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory):
    """``demo_folder(folder, steps=None)``: what ``engine.demo.prepare_demo(folder, steps=steps)``
    makes, returning its run TOML's path; the images and the tiny model are copied from a demo
    made once per worker (prepare_demo keeps a folder's images and model, and writes the metadata
    and the run file, which names its own path, for the new folder)."""
    import shutil
    from pathlib import Path

    from engine.demo import prepare_demo

    shared = tmp_path_factory.mktemp("demo") / "demo"
    prepare_demo(shared)

    def make(folder, *, steps: int | None = None) -> Path:
        folder = Path(folder)
        for part in ("images", "model"):
            shutil.copytree(shared / part, folder / part)
        return prepare_demo(folder, steps=steps)

    return make


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory):
    """A tiny SD1-flavoured diffusers folder (epsilon prediction)."""
    from engine.models.tiny import TinySpec, save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "sd1", TinySpec("sd1"))


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory):
    """A tiny SD2-flavoured diffusers folder (v-prediction, "!" padding)."""
    from engine.models.tiny import TinySpec, save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "sd2", TinySpec("sd2"))


def pytest_terminal_summary(terminalreporter):
    """The fault suite's figures (tests/test_fault_suite.py) on one line: each test records,
    per fault, whether the run survived it and whether its losses and weights equal a straight
    run's. Read from the test reports, so the line also counts faults run in xdist workers."""
    cases = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            properties = dict(getattr(report, "user_properties", ()) or ())
            if getattr(report, "when", None) == "call" and "fault_cases" in properties:
                cases += properties["fault_cases"]
    if cases:
        survived = sum(bool(c["survived"]) for c in cases)
        equal = sum(bool(c["equal"]) for c in cases)
        terminalreporter.write_line(f"fault suite: {survived}/{len(cases)} faults survived, {equal}/{len(cases)} "
                                    "with losses and weights bitwise equal to a straight run")


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory):
    """``tiny_sdxl_folder(seed)``: a tiny SDXL diffusers folder (engine/families/sdxl/tiny.py),
    saved once per worker and seed, for the SDXL tests that load, convert or train from it; its
    weights are tests/sdxl_helpers.py's ``tiny_sdxl_parts(seed)``. Read it, never write to it
    (copy it first)."""
    from engine.families.sdxl.tiny import TinySdxlSpec, save_tiny_sdxl_model

    made: dict = {}

    def folder(seed: int = 1):
        if seed not in made:
            made[seed] = save_tiny_sdxl_model(tmp_path_factory.mktemp(f"tiny-sdxl-{seed}") / "tiny",
                                              TinySdxlSpec(seed=seed))
        return made[seed]

    return folder
