"""Snapshot tests of the run dashboard at 80x24 and 160x48.

Deterministic: the fake engine uses a fixed clock and fixed figures, and its paths are fixed
strings (nothing is written), so the pictures only change when the dashboard does.
Regenerate after an intended change with: pytest tests/test_tui_dashboard_snapshots.py --snapshot-update
"""

from __future__ import annotations

import asyncio

from dashboard_helpers import FakeEngine

from sdft_tui.dashboard import DashboardApp
from sdft_tui.screens.run import RunScreen

RUN_DIR = "/runs/snapshot"


def make_app(**engine_kw):
    engine = FakeEngine(RUN_DIR, write_events=False, **engine_kw)
    app = DashboardApp(lambda: RunScreen("run.toml", engine=engine, log_path="/runs/snapshot/sdft.log"))
    return app, engine


async def _settle(pilot, condition):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not condition():
        assert loop.time() < deadline, "the fake engine did not get there"
        await pilot.pause(0.02)
    await pilot.pause()
    pilot.app.dashboard.repaint(force=True)
    await pilot.pause()


def running(total_steps=120, hold_at=90):
    app, engine = make_app(total_steps=total_steps, hold_at=hold_at, sample_every=10_000)

    async def run_before(pilot):
        await _settle(pilot, lambda: engine.held.is_set() and pilot.app.dashboard.figures.step == hold_at)
    return app, run_before


def test_running_80x24(snap_compare):
    app, run_before = running()
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_running_160x48(snap_compare):
    app, run_before = running(total_steps=400, hold_at=300)
    assert snap_compare(app, terminal_size=(160, 48), run_before=run_before)


def test_stop_question_80x24(snap_compare):
    app, run_before = running()

    async def ask(pilot):
        await run_before(pilot)
        await pilot.press("x")
        await pilot.pause()
    assert snap_compare(app, terminal_size=(80, 24), run_before=ask)


def test_out_of_memory_80x24(snap_compare):
    app, engine = make_app(total_steps=60, ending="oom", fail_at=25, sample_every=10_000)

    async def run_before(pilot):
        screen = pilot.app.dashboard
        await _settle(pilot, lambda: screen.figures.finished is not None and screen.handle.done.is_set())
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
