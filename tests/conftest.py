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


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
