"""A run built in the wizard resumes: build it with Pilot, train, stop with x, then resume with
the command the dashboard prints, and with `sdft train RUN.toml --tui --resume latest`; the
losses of the stopped + resumed run equal those of a straight run of the same file."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import threading

import pytest
from dashboard_helpers import FakeEngine, screen_text, wait_until

from engine.events import FanOut, RunStarted, StepMetrics, StepProgress, read_events
from engine.hardware import HardwareInfo
from sdft_tui.app import SdftApp
from sdft_tui.screens.confirm import ChoiceScreen
from sdft_tui.screens.run import RunScreen
from tests.wizard_helpers import make_dataset, settle

STEPS, STOP_AT = 12, 10   # the default logging interval is 10: the stop lands on an interval's end


class HoldAt:
    """An event sink that holds the training thread at one step until the test lets it go, so
    the stop key is pressed while the run is at a known step."""

    def __init__(self, step: int):
        self.step = step
        self.held = threading.Event()
        self.release = threading.Event()

    def emit(self, event) -> None:
        if isinstance(event, (StepMetrics, StepProgress)) and event.step == self.step:
            self.held.set()
            self.release.wait(120)


def held_trainer(hold: HoldAt):
    from engine.runner import run_training

    def engine(config_path, *, sink, control, log_path=None, **options):
        return run_training(config_path, sink=FanOut([sink, hold]), control=control, log_path=log_path, **options)
    return engine


async def _type(pilot, widget_id: str, text: str) -> None:
    """Paste ``text`` into the field, as a user pastes a path: one change, not one per character
    (each keystroke on Options and Review re-plans and re-checks the whole file; typing key by
    key is walked in tests/test_tui_wizard_walk.py)."""
    from textual.events import Paste

    widget = pilot.app.screen.query_one(widget_id)
    widget.focus()
    widget.value = ""
    await pilot.pause()
    widget.post_message(Paste(text))
    await pilot.pause()


async def build_and_train_in_the_wizard(pilot, app, folder, model, run_path) -> None:
    await pilot.pause()
    await _type(pilot, "#path", str(folder))
    await pilot.press("enter")
    await settle(app, pilot)
    await pilot.press("ctrl+n")                       # captions
    await settle(app, pilot)
    await pilot.press("ctrl+n")                       # buckets
    await settle(app, pilot)
    for field, value in (("resolution", "64"), ("min_bucket_reso", "64"), ("max_bucket_reso", "128"),
                         ("batch_size", "2")):
        await _type(pilot, f"#f-dataset-{field}", value)
    await pilot.press("ctrl+n")                       # options
    await settle(app, pilot)
    await _type(pilot, "#o-model-pretrained_model_name_or_path", str(model))
    await _type(pilot, "#o-train-max_train_steps", str(STEPS))
    app.screen.query_one("#o-optimizer-type").value = "AdamW"
    app.screen.query_one("#o-memory-mixed_precision").value = "no"
    await settle(app, pilot)
    await pilot.press("ctrl+n")                       # review
    await settle(app, pilot)
    await _type(pilot, "#save-path", str(run_path))
    await pilot.press("ctrl+t")                       # save + train: the dashboard opens on the real trainer
    await pilot.pause()


def interval_losses(events_path) -> dict[int, float]:
    return {e.step: e.loss for e in read_events(events_path) if isinstance(e, StepMetrics)}


@pytest.mark.slow
def test_a_wizard_run_stopped_with_x_resumes_exactly(tmp_path, tiny_sd1, monkeypatch):
    folder = make_dataset(tmp_path / "data", sizes=[(64, 64), (96, 64), (64, 96), (64, 64)])
    (folder / "img03.caption").write_text("a photo of thing 3\n", encoding="utf-8")
    run_path = tmp_path / "wizard-run.toml"
    hold = HoldAt(STOP_AT)
    monkeypatch.setattr("sdft_tui.screens.run.default_engine", lambda: held_trainer(hold))
    app = SdftApp(hardware=HardwareInfo(), start_dir=tmp_path)
    seen = {}

    async def main():
        async with app.run_test(size=(100, 30)) as pilot:
            await build_and_train_in_the_wizard(pilot, app, folder, tiny_sd1, run_path)
            screen = app.screen
            assert isinstance(screen, RunScreen), screen_text(app)
            assert await asyncio.to_thread(hold.held.wait, 300), "the run did not reach the stop step"
            await pilot.press("x")
            seen["asked"] = isinstance(app.screen, ChoiceScreen)
            await pilot.press("y")
            await pilot.pause()
            hold.release.set()
            await wait_until(pilot, lambda: screen.figures.finished is not None and screen.handle.done.is_set(),
                             timeout=120)
            screen.repaint(force=True)
            await pilot.pause()
            seen["outcome"] = str(screen.query_one("#outcome").render())
            seen["finished"] = screen.figures.finished
            await pilot.press("q")                     # back to the wizard
            await pilot.pause()
            await pilot.press("ctrl+q")
            await pilot.pause()

    asyncio.run(main())
    assert seen["asked"]
    assert seen["finished"].status == "stopped" and seen["finished"].step == STOP_AT
    # the wizard wrote the seed it drew, so every start of this file trains the same run
    assert "seed = " in run_path.read_text()

    # 1. the resume command the dashboard printed, run headless as a user would paste it
    line = next(row for row in seen["outcome"].splitlines() if row.startswith("Resume: "))
    argv = shlex.split(line.removeprefix("Resume: "))
    assert argv[:3] == ["sdft", "train", str(run_path)] and argv[3] == "--resume"
    from engine.cli import main as sdft

    assert sdft(argv[1:]) == 0
    from engine.config.run_toml import load_run_config

    run_dir = load_run_config(run_path).run_dir()
    events = run_dir / "events.jsonl"
    starts = [e for e in read_events(events) if isinstance(e, RunStarted)]
    assert [e.start_step for e in starts] == [0, STOP_AT]
    split = interval_losses(events)

    # 2. the same file trained straight through
    shutil.move(str(run_dir), str(tmp_path / "split-run"))
    assert sdft(["train", str(run_path)]) == 0
    straight = interval_losses(events)
    assert sorted(straight) == [1, STOP_AT, STEPS]   # step 1, the interval, the last step
    assert split == straight


def test_train_tui_resume_latest_reaches_the_dashboard(tmp_path, monkeypatch):
    """`sdft train RUN.toml --tui --resume latest --allow-changed` parses with the engine's own
    parser and the dashboard hands both options to the engine."""
    from sdft_tui import cli
    from sdft_tui.dashboard import DashboardApp

    engine = FakeEngine(tmp_path / "run", total_steps=3)
    monkeypatch.setattr("sdft_tui.screens.run.default_engine", lambda: engine)

    def headless_run(self, *args, **kwargs):
        async def main():
            async with self.run_test(size=(80, 24)) as pilot:
                await wait_until(pilot, lambda: self.dashboard is not None and self.dashboard.handle.done.is_set())
                await pilot.press("q")
                await pilot.pause()
        asyncio.run(main())
        return self.return_code

    monkeypatch.setattr(DashboardApp, "run", headless_run)
    from train_helpers import make_run

    config = make_run(tmp_path, tmp_path / "model")   # read before the dashboard opens, as headless does
    assert cli.main(["train", str(config), "--tui", "--resume", "latest", "--allow-changed"]) == 0
    assert engine.calls == [{"config_path": str(config), "log_path": tmp_path / "runs" / "t" / "sdft.log",
                             "resume": "latest", "allow_changed": True}]
    assert cli.main(["train", str(config), "--tui"]) == 0
    assert "resume" not in engine.calls[-1]
