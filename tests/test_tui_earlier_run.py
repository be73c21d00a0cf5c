"""The wizard asks what sdft train asks when a run folder holds an earlier run: resume it or
start over (keeping it), and Save+quit prints the command that works for that folder."""

from __future__ import annotations

import asyncio

from engine.hardware import HardwareInfo
from sdft_tui.app import SdftApp
from sdft_tui.screens.review import EarlierRunScreen
from tests.wizard_helpers import settle


def _earlier_run(run_dir, step: int = 2) -> None:
    """What a stopped run leaves: a state with its manifest and an event log with steps."""
    state = run_dir / "state" / f"demo-step{step:08d}-state"
    state.mkdir(parents=True)
    (state / "manifest.json").write_text("{}")
    (run_dir / "events.jsonl").write_text('{"event": "step", "step": 1}\n')


def _open_review_and(tmp_path, monkeypatch, demo_folder, keys: tuple[str, ...]):
    toml_path = demo_folder(tmp_path / "demo", steps=2)
    _earlier_run(tmp_path / "demo" / "runs" / "demo")
    started = {}

    def engine(config_path, *, sink, control, log_path=None, **options):
        started.update(options, config=config_path)

    monkeypatch.setattr("sdft_tui.screens.run.default_engine", lambda: engine)
    app = SdftApp(toml_path, hardware=HardwareInfo(), start_dir=tmp_path)
    seen = {}

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            await pilot.press("f6")
            await settle(app, pilot)
            await pilot.press("ctrl+t")
            await settle(app, pilot)
            for _ in range(100):
                if isinstance(app.screen, EarlierRunScreen):
                    break
                await pilot.pause(0.05)
            seen["asked"] = isinstance(app.screen, EarlierRunScreen)
            seen["question"] = str(app.screen.question) if seen["asked"] else ""
            for key in keys:
                await pilot.press(key)
                await pilot.pause()
            await settle(app, pilot)
            await pilot.pause(0.2)
            seen["screen"] = type(app.screen).__name__

    asyncio.run(main())
    return seen, started


def test_train_on_a_folder_with_an_earlier_run_asks_and_resumes_it(tmp_path, monkeypatch, demo_folder):
    seen, started = _open_review_and(tmp_path, monkeypatch, demo_folder, ("enter",))
    assert seen["asked"], "Train went ahead without asking about the earlier run"
    assert "step 2" in seen["question"] and "earlier" in seen["question"]
    assert started.get("resume") == "latest" and not started.get("restart")


def test_the_wizard_can_start_over_keeping_the_earlier_run(tmp_path, monkeypatch, demo_folder):
    seen, started = _open_review_and(tmp_path, monkeypatch, demo_folder, ("tab", "enter"))
    assert seen["asked"]
    assert started.get("restart") is True and "resume" not in started


def test_escape_starts_nothing(tmp_path, monkeypatch, demo_folder):
    seen, started = _open_review_and(tmp_path, monkeypatch, demo_folder, ("escape",))
    assert seen["asked"] and started == {} and seen["screen"] == "ReviewScreen"


def test_save_and_quit_prints_the_resume_command_for_a_run_with_a_state(tmp_path, demo_folder):
    toml_path = demo_folder(tmp_path / "demo", steps=2)
    _earlier_run(tmp_path / "demo" / "runs" / "demo")
    app = SdftApp(toml_path, hardware=HardwareInfo(), start_dir=tmp_path)

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            await pilot.press("f6")
            await settle(app, pilot)
            await pilot.press("ctrl+x")
            await settle(app, pilot)

    asyncio.run(main())
    assert f"sdft train {toml_path} --resume latest" in (app.exit_message or "")
