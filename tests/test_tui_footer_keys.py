"""Every key of a step is either in its footer or in the F1 list, and the footer says F1 has them
all; the Captions footer names the bulk edits (find/replace, add or remove a tag) at 80 columns."""

from __future__ import annotations

import pytest

from sdft_tui.screens.help import HelpScreen
from tests.test_tui_keyboard_flow import STEP_KEYS, folder_app
from tests.test_tui_polish import run_app
from tests.wizard_helpers import screen_text, settle

SIZE = (80, 24)


def test_the_captions_footer_names_the_bulk_edits_and_fits_80_columns(tmp_path):
    app, _folder = folder_app(tmp_path, step="captions")

    async def scenario(pilot):
        footer = screen_text(app).splitlines()[-1]
        assert "^e Replace/tags" in footer
        assert footer.rstrip().endswith("f1 All keys"), footer   # the last entry whole, not cut
        await pilot.press("ctrl+e")
        await pilot.pause()
        ops = [label for label, _value in app.screen.query_one("#bulk-op")._options]
        assert {"Find / replace", "Add tag(s)", "Remove tag(s)"} <= {str(o) for o in ops}

    run_app(app, scenario, SIZE)


@pytest.mark.slow
def test_f1_lists_every_key_of_the_step_the_footer_has_no_room_for(tmp_path):
    app, _folder = folder_app(tmp_path)

    async def scenario(pilot):
        for step, key in STEP_KEYS.items():
            await pilot.press(key)
            await settle(app, pilot)
            screen = app.screen
            footer = screen_text(app).splitlines()[-1]
            assert "f1 All keys" in footer, step
            wanted = {app.get_key_display(b) + " " + b.description
                      for group in screen._bindings.key_to_bindings.values() for b in group
                      if b.description and not b.key.startswith("super+")}   # macOS twins of ctrl+ keys
            await pilot.press("f1")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            listed = app.screen.query_one("Markdown").source
            for entry in wanted:
                shown, description = entry.split(" ", 1)
                assert f"- **{shown}** {description}" in listed, (step, entry)
            await pilot.press("escape")
            await pilot.pause()

    run_app(app, scenario, SIZE)
