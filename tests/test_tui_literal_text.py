"""User text on screen is shown exactly as it is: brackets in paths, file names, captions, tags,
problem keys and hints, engine messages and sample prompts are never read as markup (a ``[red]``
would vanish, a ``[/]`` would crash the screen with a MarkupError).

Everything runs in a folder literally named ``my [set1] images``, at 80x24 (nothing may raise) and
at a size where whole lines fit (the exact strings are read from the rendered screen).
"""

from __future__ import annotations

import asyncio
import json

from dashboard_helpers import T0, FakeResult, wait_until
from dashboard_helpers import screen_text as dashboard_screen_text

from engine.events import Message, RunFinished, RunStarted, SampleSaved
from engine.hardware import HardwareInfo
from sdft_tui.app import SdftApp
from tests.wizard_helpers import screen_text, settle

FOLDER = "my [set1] images"
CAPTION = "a [set1] cat, [red] hat [/] end"
TAGS = "[[datasets]], tag [set1]"
CAT = "a [red] cat.png"
SMALL = "small [x].png"
SIZES = ((80, 24), (200, 50))


def bracket_dataset(tmp_path):
    """Three images whose names and labels are full of square brackets."""
    from PIL import Image

    folder = tmp_path / FOLDER
    folder.mkdir()
    Image.new("RGB", (512, 512), (200, 40, 40)).save(folder / CAT)
    (folder / "a [red] cat.caption").write_text(CAPTION + "\n", encoding="utf-8")
    Image.new("RGB", (640, 384), (40, 200, 40)).save(folder / "b [[datasets]].png")
    (folder / "b [[datasets]].txt").write_text(TAGS + "\n", encoding="utf-8")
    Image.new("RGB", (200, 300), (40, 40, 200)).save(folder / SMALL)   # no label, upscaled, "small"
    return folder


def flat(text: str) -> str:
    return " ".join(text.split())


def widget_text(app, selector: str) -> str:
    """What the widget shows on screen: its region cut out of the rendered screen, lines joined."""
    region = app.screen.query_one(selector).region
    lines = screen_text(app).splitlines()[region.y:region.bottom]
    return flat(" ".join(line[region.x:region.right] for line in lines))


def toasts(app) -> list[str]:
    """The text of the toasts on screen, as the Toast widget renders it."""
    from textual.widgets._toast import Toast

    return [flat(toast.render().plain) for toast in app.screen.query(Toast)]


def run_wizard(app, scenario, size):
    async def go():
        async with app.run_test(size=size, notifications=True) as pilot:   # toasts are drawn
            await settle(app, pilot)
            await scenario(pilot)

    asyncio.run(go())


def test_dataset_captions_and_buckets_show_bracketed_names_and_labels_exactly(tmp_path):
    folder = bracket_dataset(tmp_path)
    for size in SIZES:
        app = SdftApp(hardware=HardwareInfo(), start_dir=tmp_path)

        async def scenario(pilot, size=size, app=app):
            path = app.screen.query_one("#path")
            path.value = str(folder)
            path.focus()
            await pilot.press("enter")
            await settle(app, pilot)
            assert app.state.scan_error is None and len(app.state.records) == 3
            if size != (80, 24):
                text = flat(screen_text(app))
                assert f"from {folder}" in text                           # the summary's path
                assert SMALL in text                                      # a health line's file
            await pilot.press("f3")
            await settle(app, pilot)
            table = app.screen.query_one("#captions")
            table.focus()
            for _ in range(3):                                            # every row drawn and selected
                await pilot.press("down")
                await pilot.pause()
            if size != (80, 24):
                table.move_cursor(row=0)
                await pilot.pause()
                text = flat(screen_text(app))
                assert CAPTION in text and TAGS in text                   # the table's caption column
                assert f"caption of {CAT} → a [red] cat.caption" in text  # the editor's line
            await pilot.press("f4")
            await settle(app, pilot)
            if size != (80, 24):
                assert f"{SMALL} 200x300 →" in flat(screen_text(app))     # the upscaled list

        run_wizard(app, scenario, size)


def test_review_problems_and_save_toast_show_keys_hints_and_paths_exactly(tmp_path):
    folder = bracket_dataset(tmp_path)
    meta = {str(folder / CAT): {"caption": CAPTION}, str(folder / "b [[datasets]].png"): {"tags": TAGS}}
    (tmp_path / "meta [1].json").write_text(json.dumps(meta), encoding="utf-8")
    run = tmp_path / "run.toml"
    run.write_text('[model]\npretrained_model_name_or_path = "model"\n\n'
                   '[[datasets]]\n  [[datasets.subsets]]\n  metadata_file = "meta [1].json"\n'
                   f'  image_dir = "{FOLDER}"\n', encoding="utf-8")
    for size in SIZES:
        app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)

        async def scenario(pilot, size=size, app=app):
            target = folder / f"run [b] {size[0]}.toml"
            assert app.state.scan_error is None, app.state.scan_error
            # a subset key at dataset level: the engine's problem names the key and hints [[datasets.subsets]]
            app.state.draft.document["datasets"][0]["alpha_mask"] = True
            app.action_goto("review")
            await settle(app, pilot)
            problems = [p for p in app.state.validate(app.screen.run_path()) if p.key == "datasets[0].alpha_mask"]
            assert problems and "[[datasets.subsets]]" in problems[0].hint
            app.screen.query_one("#save-path").value = str(target)
            await pilot.pause()
            await pilot.press("ctrl+s")
            await pilot.pause()
            await pilot.pause()
            assert target.is_file()
            if size != (80, 24):
                text = flat(screen_text(app))
                assert "error: datasets[0].alpha_mask (line " in text
                assert ("alpha_mask is only allowed inside [[datasets.subsets]] — move it into a "
                        "[[datasets.subsets]] table") in text
                assert any(f"saved {target.name}, but it has" in t for t in toasts(app)), toasts(app)

        run_wizard(app, scenario, size)


def test_a_run_file_that_cannot_load_is_quoted_exactly_in_the_toast_and_on_the_dataset_step(tmp_path):
    folder = bracket_dataset(tmp_path)
    run = folder / "bad [run].toml"
    run.write_text('[[datasets]]\n  alpha_mask = true\n  [[datasets.subsets]]\n  image_dir = "."\n', encoding="utf-8")
    for size in SIZES:
        app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)

        async def scenario(pilot, size=size, app=app):
            error = app.state.scan_error
            assert error and str(folder) in error and "[[datasets.subsets]]" in error
            if size != (80, 24):
                assert any(flat(error) in t for t in toasts(app)), toasts(app)
                app.clear_notifications()                                 # the toast covers the summary
                await pilot.pause()
                assert flat(error) in widget_text(app, "#summary")

        run_wizard(app, scenario, size)


# ---------------------------------------------------------------------- dashboard

PROMPT = "a [red] cat [/] beside [[datasets]]"
WARNING = "caption of my [set1] images/a [red] cat.png is long [/]"
FAILURE = "bad value at datasets[0].subsets[0]: add [[datasets]] [bold]x[/]"


def bracket_engine(run_dir):
    """An engine whose every message, prompt and failure holds markup-like brackets."""

    def engine(config_path, *, sink, control, log_path=None):
        sink.emit(RunStarted(run_dir=str(run_dir), total_steps=10, total_epochs=1, steps_per_epoch=10,
                             num_images=3, batch_size=1, device="cpu", model="tiny [sd1]", time=T0 + 1))
        sink.emit(Message(level="warning", text=WARNING, time=T0 + 2))
        sink.emit(SampleSaved(path=str(run_dir / "samples" / "s [0].png"), prompt=PROMPT, step=1, time=T0 + 3))
        sink.emit(RunFinished(status="failed", step=1, epoch=1, message=FAILURE, time=T0 + 4))
        return FakeResult("failed", run_dir=str(run_dir), message=FAILURE)

    return engine


def test_dashboard_log_samples_and_outcome_show_engine_text_exactly(tmp_path):
    from sdft_tui.dashboard import DashboardApp
    from sdft_tui.engine_handle import EngineHandle
    from sdft_tui.screens.run import RunScreen

    run_dir = tmp_path / FOLDER
    for size in ((80, 24), (160, 50)):
        handle = EngineHandle()
        app = DashboardApp(lambda handle=handle: RunScreen(run_dir / "run [1].toml",
                                                           engine=bracket_engine(run_dir), handle=handle))

        async def main(size=size, app=app, handle=handle):
            async with app.run_test(size=size) as pilot:
                await wait_until(pilot, lambda: handle.done.is_set() and app.dashboard.figures.finished)
                app.dashboard.repaint(force=True)
                await pilot.pause()
                await pilot.pause()
                if size != (80, 24):
                    text = flat(dashboard_screen_text(app))
                    assert WARNING in text                               # the event log
                    assert PROMPT in widget_text(app, "#sample-caption")  # the sample's prompt
                    assert f"Training failed at step 1: {FAILURE}" in text   # the outcome panel
                    assert "run [1]" in text                             # the status bar

        asyncio.run(main())
