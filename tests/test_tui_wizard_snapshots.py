"""Snapshots of every wizard step at 80x24 (no mouse, plain terminal) and 160x48.

The dataset lives at a fixed path so the pictures do not change between runs; the GPU is fixed too.
Regenerate with: pytest tests/test_tui_wizard_snapshots.py --snapshot-update
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from engine.hardware import GpuInfo, HardwareInfo
from sdft_tui.app import SdftApp
from tests.wizard_helpers import make_dataset, settle

# One fixed folder (its path shows on screen), so these tests must not run in parallel with
# each other: the xdist group keeps them on one worker (pytest runs with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("wizard-snapshots")
ROOT = Path(tempfile.gettempdir()) / "sdft-wizard-snapshots"
# a GPU box with bitsandbytes, whatever this machine has installed (suggestions depend on it)
GPU = HardwareInfo(gpus=[GpuInfo(0, "NVIDIA GeForce RTX 3060", 12 * 2**30)], source="test",
                   packages=frozenset({"bitsandbytes"}))
STEP_KEYS = {"dataset": None, "captions": "f3", "buckets": "f4", "options": "f5", "review": "f6", "help": "f1"}


def _stop_cursor_blink(app) -> None:
    """A blinking cursor is drawn or not depending on timing: freeze it for snapshots."""
    from textual.widgets import Input, TextArea

    for widget in app.screen.query(Input):
        widget.cursor_blink = False
    for widget in app.screen.query(TextArea):
        widget.cursor_blink = False


def _app_and_steps(step: str):
    if ROOT.exists():
        shutil.rmtree(ROOT)
    folder = make_dataset(ROOT)
    app = SdftApp(hardware=GPU, start_dir=ROOT)

    async def run_before(pilot):
        await pilot.pause()
        path = pilot.app.screen.query_one("#path")
        path.value = str(folder)
        path.focus()
        await pilot.press("enter")
        await settle(pilot.app, pilot)
        # what a GPU box with bitsandbytes starts from (the defaults are the ones any machine runs)
        pilot.app.state.set("memory.mixed_precision", "fp16")
        pilot.app.state.set("optimizer.type", "AdamW8bit")
        pilot.app.state.set("train.seed", 1234)   # else the Review shows a freshly drawn seed
        if step == "options":
            pilot.app.state.set("optimizer.type", "AdamW")  # over budget: shows the suggestions
            pilot.app.state.set("memory.gradient_checkpointing", False)
        key = STEP_KEYS[step]
        if key:
            await pilot.press(key)
        await settle(pilot.app, pilot)
        _stop_cursor_blink(pilot.app)
        await pilot.pause(0.1)

    return app, run_before


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
@pytest.mark.parametrize("step", ["dataset", "captions", "buckets", "options", "review"])
def test_wizard_step_snapshot(snap_compare, step, size):
    app, run_before = _app_and_steps(step)
    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_help_snapshot(snap_compare):
    app, run_before = _app_and_steps("help")
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
