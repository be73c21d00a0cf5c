"""The wizard never drops work: Ctrl+Q with unsaved changes asks (save, quit without saving,
cancel), the stop dialog offers to save the model now, and the stop summary names each file's step."""

from __future__ import annotations

import asyncio
import json

from dashboard_helpers import FakeEngine, run_app, wait_thread_event, wait_until
from test_tui_polish import demo_like_run

from engine.hardware import HardwareInfo
from sdft_tui.app import SdftApp
from sdft_tui.screens.confirm import ChoiceScreen
from tests.wizard_helpers import settle as settle_wizard


def _wizard(tmp_path, keys_before_quit, answer_keys):
    run = demo_like_run(tmp_path)
    app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)
    seen = {}

    async def go():
        async with app.run_test(size=(80, 24)) as pilot:
            await settle_wizard(app, pilot)
            await keys_before_quit(app, pilot)
            await pilot.press("ctrl+q")
            await pilot.pause()
            seen["asked"] = isinstance(app.screen, ChoiceScreen)
            seen["question"] = str(app.screen.question) if seen["asked"] else ""
            for key in answer_keys:
                await pilot.press(key)
                await pilot.pause()
            seen["running"] = app.is_running
    asyncio.run(go())
    return app, run, seen


async def _type_in_the_caption_editor(app, pilot):
    await pilot.press("f3")
    await settle_wizard(app, pilot)
    app.screen.query_one("#editor").load_text("typed but not saved")


async def _nothing(app, pilot):
    pass


def test_ctrl_q_with_a_caption_being_edited_asks_and_save_keeps_it(tmp_path):
    app, run, seen = _wizard(tmp_path, _type_in_the_caption_editor, ["enter"])   # Save and quit
    assert seen["asked"] and "the caption of" in seen["question"]
    captions = [e["caption"] for e in json.loads((tmp_path / "metadata.json").read_text()).values()]
    assert "typed but not saved" in captions
    assert not seen["running"]


def test_quit_without_saving_loses_only_what_was_chosen(tmp_path):
    app, run, seen = _wizard(tmp_path, _type_in_the_caption_editor, ["tab", "enter"])   # Quit without saving
    assert seen["asked"] and not seen["running"]
    captions = [e["caption"] for e in json.loads((tmp_path / "metadata.json").read_text()).values()]
    assert "typed but not saved" not in captions


def test_escape_keeps_the_wizard_open(tmp_path):
    _app, _run, seen = _wizard(tmp_path, _type_in_the_caption_editor, ["escape"])
    assert seen["asked"] and seen["running"]


def test_changed_options_are_unsaved_work_too(tmp_path):
    async def change_an_option(app, pilot):
        app.state.set_by_user("train.max_train_steps", 1234)

    app, run, seen = _wizard(tmp_path, change_an_option, ["enter"])
    assert seen["asked"] and "changes to the run file" in seen["question"]
    assert "max_train_steps = 1234" in run.read_text()
    assert f"sdft train {run}" in (app.exit_message or "")


def test_nothing_unsaved_quits_at_once(tmp_path):
    _app, _run, seen = _wizard(tmp_path, _nothing, [])
    assert not seen["asked"] and not seen["running"]


def test_the_stop_dialog_can_save_the_model_and_the_summary_names_each_files_step(tmp_path):
    engine = FakeEngine(tmp_path / "run", total_steps=100, hold_at=5)
    out = {}

    async def scenario(app, pilot, screen):
        await wait_thread_event(engine.held)
        await pilot.press("x")
        assert isinstance(app.screen, ChoiceScreen)
        saves = []
        request_save = screen.control.request_save
        screen.control.request_save = lambda: (saves.append(True), request_save())
        await pilot.press("s")                          # save the model, then stop
        out["save"], out["stop"] = bool(saves), screen.control.stop_requested
        await wait_until(pilot, lambda: screen.figures.finished is not None and screen.handle.done.is_set())
        await pilot.press("q")
        await pilot.pause()

    run_app(engine, scenario)
    assert out["save"] and out["stop"], "the model of this step is saved beside the state"


def test_the_stop_summary_names_each_files_step(tmp_path):
    from engine.events import JsonlSink, ModelSaved, RunFinished
    from sdft_tui.dashboard import DashboardApp
    from sdft_tui.screens.run import WatchScreen

    events = tmp_path / "events.jsonl"
    sink = JsonlSink(events)
    model, state = str(tmp_path / "checkpoints" / "t-step00000020.safetensors"), str(tmp_path / "state" / "s57")
    sink.emit(ModelSaved(path=model, what="model", step=20, epoch=1))
    sink.emit(ModelSaved(path=state, what="state", step=57, epoch=1))
    sink.emit(RunFinished(status="stopped", step=57, epoch=1, message="stopped", model_path=model, state_path=state))
    sink.close()
    app = DashboardApp(lambda: WatchScreen(events))
    out = {}

    async def go():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: app.dashboard.figures.finished is not None)
            out["text"] = str(app.dashboard.outcome_text()[0])

    asyncio.run(go())
    assert f"Model: {model} (step 20, before the stop at 57)" in out["text"]
    assert "(step 57)" in out["text"] and state in out["text"]
