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
from sdft_tui.session import WizardSession
from tests.wizard_helpers import make_dataset, settle

# One fixed folder (its path shows on screen), so these tests must not run in parallel with
# each other: the xdist group keeps them on one worker (pytest runs with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("wizard-snapshots")
ROOT = Path(tempfile.gettempdir()) / "sdft-wizard-snapshots"
# a GPU box with bitsandbytes, whatever this machine has installed (suggestions depend on it)
GPU = HardwareInfo(gpus=[GpuInfo(0, "NVIDIA GeForce RTX 3060", 12 * 2**30)], source="test",
                   packages=frozenset({"bitsandbytes"}))


def _stop_cursor_blink(app) -> None:
    """A blinking cursor is drawn or not depending on timing: freeze it for snapshots."""
    from textual.widgets import Input, TextArea

    for widget in app.screen.query(Input):
        widget.cursor_blink = False
    for widget in app.screen.query(TextArea):
        widget.cursor_blink = False


@pytest.fixture(scope="module")
def folder():
    """The generated dataset, made once for the module (no test writes to it)."""
    if ROOT.exists():
        shutil.rmtree(ROOT)
    return make_dataset(ROOT)


def starting_values(state: WizardSession) -> None:
    """What a GPU box with bitsandbytes starts from (the defaults are the ones any machine runs)."""
    state.set("memory.mixed_precision", "fp16")
    state.set("optimizer.type", "AdamW8bit")
    state.set("train.seed", 1234)   # else the Review shows a freshly drawn seed


def scanned(folder: Path) -> WizardSession:
    """What typing the folder's path on the Dataset step leaves (its scan worker's work)."""
    state = WizardSession()
    state.load_source(folder)
    state.count_tokens()
    state.run_health_check()
    starting_values(state)
    return state


def _app_and_steps(folder: Path, step: str):
    """The Dataset step scans the folder as a user does (its picture shows the typed path); every
    other step opens on its own, the dataset already scanned (help: over the Dataset step)."""
    if step == "dataset":
        return SdftApp(hardware=GPU, start_dir=ROOT), scan_then_snap
    state = scanned(folder)
    if step == "options":
        state.set("optimizer.type", "AdamW")  # over budget: shows the suggestions
        state.set("memory.gradient_checkpointing", False)
    app = SdftApp(hardware=GPU, start_dir=ROOT, state=state, step="dataset" if step == "help" else step)

    async def run_before(pilot):
        if step == "help":
            await pilot.press("f1")
        await ready_to_snap(pilot)

    return app, run_before


async def scan_then_snap(pilot) -> None:
    await pilot.pause()
    path = pilot.app.screen.query_one("#path")
    path.value = str(ROOT / "images")
    path.focus()
    await pilot.press("enter")
    await settle(pilot.app, pilot)
    starting_values(pilot.app.state)
    await ready_to_snap(pilot)


async def ready_to_snap(pilot) -> None:
    await settle(pilot.app, pilot)
    _stop_cursor_blink(pilot.app)
    await pilot.pause(0.1)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
@pytest.mark.parametrize("step", ["dataset", "captions", "buckets", "options", "review"])
def test_wizard_step_snapshot(snap_compare, folder, step, size):
    app, run_before = _app_and_steps(folder, step)
    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_help_snapshot(snap_compare, folder):
    app, run_before = _app_and_steps(folder, "help")
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
