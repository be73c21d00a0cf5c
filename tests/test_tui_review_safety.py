"""The wizard never loses a user's work and never hands over a file the engine would refuse:
the Review step runs `sdft train --check`'s whole check, Save+train refuses what it finds,
saving over a run file this session did not open asks first (or takes a free name), and an
empty image folder says so and keeps the later steps closed."""

from __future__ import annotations

from engine.hardware import HardwareInfo
from sdft_tui.app import SdftApp
from sdft_tui.screens.review import ReplaceFileScreen
from sdft_tui.session import WizardSession
from tests.test_tui_polish import run_app
from tests.wizard_helpers import make_dataset, screen_text, settle


def folder_app(tmp_path, model) -> SdftApp:
    state = WizardSession()
    state.load_source(make_dataset(tmp_path))
    state.set("model.pretrained_model_name_or_path", str(model))
    state.set("train.seed", 3)
    return SdftApp(hardware=HardwareInfo(), start_dir=tmp_path, state=state)


def notes(app) -> str:
    return "\n".join(n.message for n in app._notifications)


def flat(text: str) -> str:
    return " ".join(text.split())


def test_review_runs_the_full_check_and_train_refuses_what_it_finds(tmp_path, tiny_sd1):
    missing = tmp_path / "no-such-model"
    app = folder_app(tmp_path, missing)

    async def scenario(pilot):
        assert not [p for p in app.state.validate() if p.severity == "error"], \
            "the schema alone accepts the file: only the full check finds the missing model"
        await pilot.press("f6")
        await settle(app, pilot)
        text = flat(screen_text(app))
        assert "error: model.pretrained_model_name_or_path" in text, text
        assert "accepts this file" not in text
        await pilot.press("ctrl+t")
        await settle(app, pilot)
        assert app.training_screen() is None, "a file the engine refuses does not start training"
        assert "fix the 1 problem(s) above before training" in notes(app), notes(app)
        # with a model that exists, the same step says the check passes
        app.state.set("model.pretrained_model_name_or_path", str(tiny_sd1))
        app.screen.refresh_view()
        await settle(app, pilot)
        assert "✓ sdft train --check accepts this file" in flat(screen_text(app))

    run_app(app, scenario, (120, 40))


def test_saving_over_a_file_this_session_did_not_open_asks_first(tmp_path, tiny_sd1):
    app = folder_app(tmp_path, tiny_sd1)
    target = app.state.project.default_run_path()
    target.write_text("# hand-written, keep me\n", encoding="utf-8")

    async def scenario(pilot):
        await pilot.press("f6")
        await settle(app, pilot)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, ReplaceFileScreen)
        assert f"Save as {target.stem}-2.toml" in screen_text(app)
        await pilot.press("enter")                     # the focused, safe choice: a free name
        await settle(app, pilot)
        renamed = target.with_name(f"{target.stem}-2.toml")
        assert renamed.is_file() and target.read_text(encoding="utf-8") == "# hand-written, keep me\n"
        assert app.screen.query_one("#save-path").value == str(renamed)
        await pilot.press("ctrl+s")                    # now the session's own file: no question
        await pilot.pause()
        assert not isinstance(app.screen, ReplaceFileScreen)
        # back to the old name: asked again; escape saves nothing
        app.screen.query_one("#save-path").value = str(target)
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert target.read_text(encoding="utf-8") == "# hand-written, keep me\n"
        assert "not saved" in notes(app)
        # and "Replace it" replaces
        await pilot.press("ctrl+s")
        await pilot.pause()
        await pilot.click("#replace")
        await settle(app, pilot)
        assert "[model]" in target.read_text(encoding="utf-8")

    run_app(app, scenario, (80, 24))


def test_an_empty_image_folder_says_so_and_next_is_refused(tmp_path):
    empty = tmp_path / "holiday"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image", encoding="utf-8")
    app = SdftApp(hardware=HardwareInfo(), start_dir=tmp_path)

    async def scenario(pilot):
        path = app.screen.query_one("#path")
        path.value = str(empty)
        path.focus()
        await pilot.press("enter")
        await settle(app, pilot)
        shown = flat(screen_text(app))
        assert "No images in" in shown and "Add images or pick another folder." in shown, shown
        for key in ("ctrl+n", "f3", "f6"):
            await pilot.press(key)
            await pilot.pause()
            assert app.current_step() == "dataset", key
        assert f"No images in {empty}" in notes(app)

    run_app(app, scenario, (80, 24))


def test_a_path_typed_key_by_key_runs_one_check_for_what_it_ends_as(tmp_path, tiny_sd1):
    """The full check takes seconds and cannot be interrupted: keys typed while one runs start no
    more of them; the file as it is when the check ends is checked once, and its verdict shown."""
    import threading

    from textual.widgets import Input

    app = folder_app(tmp_path, tiny_sd1)
    checked: list = []
    release = threading.Event()
    real_check = app.state.full_check

    def slow_check(path=None):
        checked.append(path)
        release.wait(timeout=60)        # the first check runs until every key is typed
        return real_check(path)

    app.state.full_check = slow_check

    async def scenario(pilot):
        await pilot.press("f6")
        field = app.screen.query_one("#save-path", Input)
        field.focus()
        await pilot.pause()
        await pilot.press("end", *"-typed")
        assert len(checked) == 1, checked                   # still the check the step started with
        assert "checking the model" in flat(screen_text(app))
        release.set()
        await settle(app, pilot)
        assert [p.name for p in checked] == [checked[0].name, checked[0].name + "-typed"], checked
        assert "✓ sdft train --check accepts this file" in flat(screen_text(app))

    run_app(app, scenario, (120, 40))
