"""The dashboard at 80x24 after a run ends, the event log's wrapping, and keys that fit the state.

Found by using it over a plain 80x24 terminal: the outcome panel must not push the memory pane
out of view, wrapped events stay readable, and the footer only offers what can still be done.
"""

from __future__ import annotations

import asyncio

from dashboard_helpers import FakeEngine, run_app, screen_text, settle, wait_until
from rich.console import Console

from sdft_tui.dashboard import DashboardApp
from sdft_tui.screens.confirm import ChoiceScreen
from sdft_tui.widgets.event_log import HangingLine


def test_memory_pane_stays_readable_at_80x24_after_a_stop(tmp_path):
    engine = FakeEngine(tmp_path / "run", total_steps=100, hold_at=10)
    out = {}

    async def scenario(app, pilot, screen):
        await wait_until(pilot, lambda: engine.held.is_set())
        await pilot.press("x")
        assert isinstance(app.screen, ChoiceScreen)
        await pilot.press("y")
        await wait_until(pilot, lambda: screen.figures.finished is not None and screen.handle.done.is_set())
        await settle(pilot, screen)
        out["text"] = screen_text(app)
        out["memory"] = screen.query_one("#vram").content_region.height
        await pilot.press("q")
        await pilot.pause()

    run_app(engine, scenario)
    text = out["text"]
    assert out["memory"] >= 3                      # alloc, reserved, peak at least
    assert "peak" in text and "reserved" in text
    assert "Training stopped at step" in text
    assert "Resume: sdft train run.toml --resume" in text
    footer = text.splitlines()[-1]
    assert "Stop" not in footer and "Pause" not in footer and "Sample" not in footer  # run is over
    assert "q Quit" in footer


def test_pause_key_reads_resume_while_paused(tmp_path):
    engine = FakeEngine(tmp_path / "run", total_steps=100, hold_at=5)
    out = {}

    async def scenario(app, pilot, screen):
        await wait_until(pilot, lambda: engine.held.is_set())
        await settle(pilot, screen)
        out["running"] = screen_text(app).splitlines()[-1]
        await pilot.press("p")
        await wait_until(pilot, lambda: screen.figures.status == "paused")
        await settle(pilot, screen)
        out["paused"] = screen_text(app).splitlines()[-1]
        await pilot.press("p")
        assert not screen.control.paused
        screen.control.request_stop("test", save_state=True)
        await wait_until(pilot, lambda: screen.handle.done.is_set())

    run_app(engine, scenario)
    assert "p Pause" in out["running"] and "Resume" not in out["running"]
    assert "p Resume" in out["paused"] and "Pause" not in out["paused"]


def test_wrapped_event_lines_hang_under_the_text_not_the_time():
    console = Console(width=30, color_system=None, legacy_windows=False)
    with console.capture() as cap:
        console.print(HangingLine("+00:25 ", "saved model at step 12: demo/runs/demo/checkpoints/x.safetensors"))
    lines = cap.get().rstrip("\n").splitlines()
    assert lines[0].startswith("+00:25 saved model")
    assert len(lines) >= 3
    assert all(line.startswith(" " * 7) and line[7] != " " for line in lines[1:])
    assert all(len(line) <= 30 for line in lines)


def test_event_log_pane_indents_its_wrapped_lines(tmp_path):
    engine = FakeEngine(tmp_path / "run", total_steps=20, hold_at=3)
    out = {}

    async def scenario(app, pilot, screen):
        await wait_until(pilot, lambda: engine.held.is_set())
        screen.figures.note("a very long warning about something the user should read in full, "
                            "wrapping over several lines of the narrow events pane", "warning")
        await settle(pilot, screen)
        log = screen.query_one("#event-log")
        out["lines"] = [strip.text for strip in log.lines]
        screen.control.request_stop("test", save_state=True)
        await wait_until(pilot, lambda: screen.handle.done.is_set())

    run_app(engine, scenario)
    lines = out["lines"]
    start = next(i for i, line in enumerate(lines) if "a very long warning" in line)
    assert lines[start].startswith("+")
    assert lines[start + 1].startswith("       ") and lines[start + 1].strip()


def test_ram_figure_is_never_cut_at_80_columns(tmp_path):
    engine = FakeEngine(tmp_path / "run", total_steps=20, hold_at=3, cuda=False)
    out = {}

    async def scenario(app, pilot, screen):
        await wait_until(pilot, lambda: engine.held.is_set())
        screen.figures.last = type(screen.figures.last)(**{**screen.figures.last.__dict__,
                                                          "ram_used": 761 * 2**20, "ram_total": 23.5 * 2**30})
        await settle(pilot, screen)
        out["text"] = screen_text(app)
        screen.control.request_stop("test", save_state=True)
        await wait_until(pilot, lambda: screen.handle.done.is_set())

    run_app(engine, scenario)
    assert "761 MiB / 23.5 GiB" in out["text"]


def test_the_shell_keeps_the_outcome_after_the_dashboard_closes(tmp_path, monkeypatch, capsys):
    """`sdft train --tui` stopped with q: the panel is gone, so the terminal says how to resume."""
    from sdft_tui.dashboard import run_dashboard

    engine = FakeEngine(tmp_path / "run", total_steps=100, hold_at=5)

    def headless_run(self, *args, **kwargs):
        async def main():
            async with self.run_test(size=(80, 24)) as pilot:
                await wait_until(pilot, lambda: engine.held.is_set())
                await pilot.press("q")
                await pilot.press("y")
                await wait_until(pilot, lambda: self.dashboard.handle.done.is_set() or not self.is_running)
        asyncio.run(main())
        return self.return_code

    monkeypatch.setattr(DashboardApp, "run", headless_run)
    assert run_dashboard(tmp_path / "run.toml", engine=engine) == 130
    err = capsys.readouterr().err
    assert f"sdft train {tmp_path / 'run.toml'} --resume {tmp_path / 'run'}/state/step-" in err


def test_watch_does_not_offer_the_sample_key(tmp_path):
    """A watch of a run that is not training cannot take a sample: its empty samples pane must not say
    `n: sample now`."""
    from sdft_tui.screens.run import WatchScreen

    (tmp_path / "events.jsonl").write_text("", encoding="utf-8")
    app = DashboardApp(lambda: WatchScreen(tmp_path / "events.jsonl"))
    out = {}

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            out["text"] = screen_text(app)
            await pilot.press("q")

    asyncio.run(main())
    assert "no samples yet" in out["text"] and "sample now" not in out["text"]
