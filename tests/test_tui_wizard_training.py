"""The wizard with the dashboard on top: quitting asks first, steps cannot be left mid-run."""

from __future__ import annotations

import asyncio
import threading

from dashboard_helpers import FakeEngine

from sdft_tui.app import SdftApp
from sdft_tui.dashboard import open_run_screen
from sdft_tui.screens.confirm import ConfirmScreen
from tests.wizard_helpers import screen_text


async def _wait(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 20.0), "the engine thread did not get there"


def test_ctrl_q_in_the_wizard_asks_before_stopping_a_run(tmp_path):
    engine = FakeEngine(tmp_path / "run", total_steps=100, hold_at=5)
    app = SdftApp(start_dir=tmp_path)
    seen = {}

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            screen = open_run_screen(app, tmp_path / "run.toml", engine=engine)
            await pilot.pause()
            await _wait(engine.held)
            await pilot.press("f3")                    # wizard steps stay out of reach mid-run
            assert app.screen is screen
            await pilot.press("f1")                    # the wizard's help is not the dashboard's
            assert app.screen is screen
            screen.repaint(force=True)
            await pilot.pause()
            footer = screen_text(app).splitlines()[-1]
            seen["footer"] = "q Quit" in footer and "^q" not in footer and "f1" not in footer
            await pilot.press("ctrl+q")
            seen["asked"] = isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            seen["kept"] = app.screen is screen and not screen.control.stop_requested
            await pilot.press("ctrl+q")
            await pilot.press("y")
            seen["stopping"] = screen.control.stop_requested
            screen.control.resume()

    asyncio.run(main())
    assert seen == {"asked": True, "kept": True, "stopping": True, "footer": True}


def test_demo_mode_tells_a_first_time_user_how_to_train(tmp_path, demo_folder):
    from engine.hardware import HardwareInfo

    toml_path = demo_folder(tmp_path / "demo", steps=2)
    app = SdftApp(toml_path, demo=True, hardware=HardwareInfo(), start_dir=tmp_path)
    seen = {}

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            seen["notes"] = [n.message for n in app._notifications]

    asyncio.run(main())
    assert any("Ctrl+T" in note and "F6" in note for note in seen["notes"])


def test_quitting_the_wizard_after_a_run_prints_where_the_model_went(tmp_path, capsys, demo_folder):
    from engine.hardware import HardwareInfo
    from sdft_tui.app import print_exit_report

    toml_path = demo_folder(tmp_path / "demo", steps=2)
    engine = FakeEngine(tmp_path / "demo" / "runs" / "demo", total_steps=4)
    app = SdftApp(toml_path, demo=True, hardware=HardwareInfo(), start_dir=tmp_path)

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            screen = open_run_screen(app, toml_path, engine=engine)
            await pilot.pause()
            await _wait(engine.finished)
            await pilot.pause()
            await pilot.press("q")                     # close the dashboard, then quit the wizard
            await pilot.pause()
            await pilot.press("ctrl+q")
            await pilot.pause()
            assert app.last_run is screen

    asyncio.run(main())
    print_exit_report(app)
    out = capsys.readouterr()
    model = tmp_path / "demo" / "runs" / "demo" / "checkpoints" / "final.safetensors"
    assert f"training completed; model: {model}" in out.out + out.err


def test_quitting_the_wizard_mid_run_waits_for_the_save_and_prints_the_resume_command(tmp_path, capsys):
    from engine.hardware import HardwareInfo
    from sdft_tui.app import print_exit_report

    engine = FakeEngine(tmp_path / "run", total_steps=100, hold_at=3)
    app = SdftApp(start_dir=tmp_path, hardware=HardwareInfo())
    config = tmp_path / "run.toml"

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            open_run_screen(app, config, engine=engine)
            await pilot.pause()
            await _wait(engine.held)
            await pilot.press("ctrl+q")
            await pilot.press("y")                     # stop and quit: the save finishes first
            await _wait(engine.finished)
            await pilot.pause()

    asyncio.run(main())
    print_exit_report(app)
    out = capsys.readouterr()
    assert f"sdft train {config} --resume {tmp_path / 'run'}/state/step-" in out.out + out.err


def test_the_demo_quit_untrained_says_how_to_train_it(tmp_path, capsys, demo_folder):
    from engine.hardware import HardwareInfo
    from sdft_tui.app import print_exit_report

    toml_path = demo_folder(tmp_path / "demo", steps=2)
    app = SdftApp(toml_path, demo=True, hardware=HardwareInfo(), start_dir=tmp_path)

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await pilot.press("ctrl+q")
            await pilot.pause()

    asyncio.run(main())
    print_exit_report(app)
    assert f"sdft train {toml_path}" in capsys.readouterr().out
