"""Focus you can see at 80x24 without colour: over SSH, in tmux (234 against 235) or on a
16-colour terminal a tint is lost, so every Tab stop must change the screen's characters or its
reverse/bold attributes, not only a colour; and what is typed lands in the field that shows it."""

from __future__ import annotations

import pytest
from textual.widgets import Input, Select

from sdft_tui.screens.captions import BulkEditScreen
from tests.test_tui_keyboard_flow import STEP_KEYS, folder_app
from tests.test_tui_polish import run_app
from tests.wizard_helpers import settle

SIZE = (80, 24)


def monochrome_cells(app) -> list[list[tuple[str, bool, bool]]]:
    """The screen as a monochrome terminal shows it: each cell's character, reverse and bold."""
    rows = []
    for strip in app.screen._compositor.render_strips():
        row = []
        for seg in strip:
            style = seg.style
            mark = (bool(style and style.reverse), bool(style and style.bold))
            row.extend((ch,) + mark for ch in seg.text)
        rows.append(row)
    return rows


async def invisible_stops(app, pilot) -> list[str]:
    """The Tab stops whose focus changes nothing but colours on the rows they take."""
    from textual.widgets import TextArea

    for widget in app.screen.query(Input):
        widget.cursor_blink = False
    for widget in app.screen.query(TextArea):
        widget.cursor_blink = False
    unseen = []
    for widget in list(app.screen.focus_chain):
        app.screen.set_focus(None)
        await pilot.pause()
        blurred = monochrome_cells(app)
        widget.focus()
        await pilot.pause()
        focused = monochrome_cells(app)
        top, bottom = widget.region.y, widget.region.bottom
        if blurred[top:bottom] == focused[top:bottom]:
            unseen.append(f"{type(widget).__name__}#{widget.id}")
    return unseen


@pytest.mark.slow
def test_every_tab_stop_shows_its_focus_without_colour(tmp_path):
    app, _folder = folder_app(tmp_path)

    async def scenario(pilot):
        for step, key in STEP_KEYS.items():
            await pilot.press(key)
            await settle(app, pilot)
            assert await invisible_stops(app, pilot) == [], step

    run_app(app, scenario, SIZE)


def test_a_focused_fields_label_turns_reverse_and_follows_the_focus(tmp_path):
    """A Select has no cursor: its row's label (and the Select itself) say where typing goes."""
    app, _folder = folder_app(tmp_path, step="options")

    async def scenario(pilot):
        labels = {w.id: w.parent.query_one("Label.form-label") for w in app.screen.query(Select)}
        first, second = "o-model-v2", "o-model-v_parameterization"
        app.screen.query_one(f"#{first}").focus()
        await pilot.pause()
        assert labels[first].styles.text_style.reverse and not labels[second].styles.text_style.reverse
        await pilot.press("tab")
        await pilot.pause()
        assert app.focused.id == second
        assert labels[second].styles.text_style.reverse and not labels[first].styles.text_style.reverse

    run_app(app, scenario, SIZE)


def test_typed_text_lands_in_the_field_that_shows_focus(tmp_path):
    app, _folder = folder_app(tmp_path, step="options")

    async def scenario(pilot):
        steps = app.screen.query_one("#o-train-max_train_steps", Input)
        app.screen.query_one("#o-train-max_train_epochs").focus()
        await pilot.press("tab")   # as a user gets there: the field's text is selected
        await pilot.pause()
        assert app.focused is steps and steps.parent.query_one("Label.form-label").styles.text_style.reverse
        await pilot.press("5", "0")
        await pilot.pause()
        assert steps.value == "50" and app.state.get("train.max_train_steps") == 50

    run_app(app, scenario, SIZE)


def test_the_bulk_edit_dialog_has_boxed_fields_and_starts_in_the_text_field(tmp_path):
    app, _folder = folder_app(tmp_path, step="captions")

    async def scenario(pilot):
        await pilot.press("ctrl+e")
        await pilot.pause()
        assert isinstance(app.screen, BulkEditScreen)
        for widget in app.screen.query(Input):
            assert widget.region.height == 3 and widget.styles.border_top[0] != "", widget.id   # a box
        assert app.focused.id == "bulk-a"
        assert app.focused.parent.query_one("Label.form-label").styles.text_style.reverse
        assert await invisible_stops(app, pilot) == []

    run_app(app, scenario, SIZE)


def test_the_labelling_dialogs_start_on_a_visible_first_focus(tmp_path):
    """ctrl+l's models dialog starts in its first field and f8 over existing captions on the safe
    choice; every Tab stop of both shows its focus without colour, at 80x24."""
    from sdft_tui.screens.label_models import LabelModelsScreen, ReplaceLabelsScreen

    app, _folder = folder_app(tmp_path, step="captions")

    async def scenario(pilot):
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert isinstance(app.screen, LabelModelsScreen)
        assert app.focused.id == "caption-model"
        for widget in app.screen.query(Input):
            assert widget.region.height == 3 and widget.styles.border_top[0] != "", widget.id   # a box
        assert await invisible_stops(app, pilot) == []
        await pilot.press("escape")
        await pilot.pause()
        # the longest error the dialog shows still leaves every field and button on the 24 rows
        error = "BLIP model folder not found: " + "/a/long/path" * 12 + "\n" + "\n".join(["more advice"] * 12)
        app.push_screen(LabelModelsScreen(app.state.label_models, error))
        await pilot.pause()
        assert app.screen.query_one("#models-dialog").region.bottom <= SIZE[1]
        assert app.screen.query_one("#models-cancel").region.bottom <= SIZE[1] - 1
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("f8")
        await pilot.pause()
        assert isinstance(app.screen, ReplaceLabelsScreen)
        assert app.focused.id == "replace-missing"
        assert await invisible_stops(app, pilot) == []

    run_app(app, scenario, SIZE)


def test_the_question_dialogs_start_on_the_safe_answer_and_show_focus_without_colour(tmp_path):
    """Yes/no, several answers, and Review's "the file exists": the first focus is the answer that
    loses nothing, and Tab moves a focus that shows without colour."""
    from pathlib import Path

    from sdft_tui.screens.confirm import ChoiceScreen, ConfirmScreen
    from sdft_tui.screens.review import ReplaceFileScreen

    app, _folder = folder_app(tmp_path)
    dialogs = [(ConfirmScreen("Stop training?"), "no"),
               (ChoiceScreen("Unsaved edits.", [("save", "Save"), ("discard", "Discard"), ("stay", "Stay")]),
                "answer-save"),
               (ReplaceFileScreen(Path("run.toml"), Path("run-2.toml")), "rename")]

    async def scenario(pilot):
        for dialog, first in dialogs:
            app.push_screen(dialog)
            await pilot.pause()
            assert app.focused is not None and app.focused.id == first, type(dialog).__name__
            assert await invisible_stops(app, pilot) == [], type(dialog).__name__
            app.pop_screen()
            await pilot.pause()

    run_app(app, scenario, SIZE)
