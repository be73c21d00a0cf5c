"""The demo's per-step losses, bit for bit, as recorded before the engine's refactors.

Refactors (the Trainer of parts, the wizard's project model, one registry) must not change what
training computes. This test trains the built-in demo for a few steps on one CPU thread and
compares every loss with the recorded values exactly (float hex, not a tolerance).

When a change is *meant* to alter the numbers (a new default, a fixed bug), regenerate the record
with ``SDFT_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_demo.py`` and say why in the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from engine.demo import prepare_demo
from engine.events import ListSink, StepMetrics
from engine.runner import run_training

GOLDEN = Path(__file__).parent / "data" / "golden_demo_losses.json"
STEPS = 6


# Not marked slow although it trains: it is the check every refactor needs, so the quick tier
# (README's test command) keeps it.
def test_demo_losses_are_bit_identical_to_the_record(tmp_path):
    if torch.get_num_threads() != 1:
        pytest.skip("the record is for one thread (OMP_NUM_THREADS=1)")
    config = prepare_demo(tmp_path / "demo", steps=STEPS)
    text = config.read_text(encoding="utf-8")
    assert "[logging]\nevery_n_steps = 5" in text
    config.write_text(text.replace("[logging]\nevery_n_steps = 5", "[logging]\nevery_n_steps = 1"))  # a loss per step
    sink = ListSink()
    result = run_training(config, sink=sink)
    assert result.status == "completed", result.message
    losses = {str(e.step): float(e.loss).hex() for e in sink.of(StepMetrics)}
    assert len(losses) == STEPS
    if os.environ.get("SDFT_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"torch": torch.__version__, "losses": losses}, indent=1) + "\n")
    record = json.loads(GOLDEN.read_text())
    if record["torch"] != torch.__version__:
        pytest.skip(f"recorded with torch {record['torch']}; kernels of another version round differently")
    assert losses == record["losses"]
