"""At 80 columns the Review step shows the whole run file: long lines wrap, none is cut."""

from __future__ import annotations

from tests.test_tui_keyboard_flow import folder_app
from tests.test_tui_polish import run_app
from tests.wizard_helpers import screen_text, settle


def test_review_wraps_long_toml_lines_at_80_columns(tmp_path):
    app, _folder = folder_app(tmp_path)
    long_name = "a-rather-long-folder-name-for-the-outputs-of-this-run-" * 2

    async def scenario(pilot):
        app.state.set("train.output_dir", long_name)
        await pilot.press("f6")
        await settle(app, pilot)
        view = app.screen.query_one("#toml-view")
        assert view.max_scroll_x == 0   # nothing to the right of the edge
        line = next(n for n, text in enumerate(app.state.render_toml(app.screen.run_path()).splitlines())
                    if long_name in text)
        view.scroll_to(y=line, animate=False)
        await pilot.pause()
        # the line, wrapped over two rows, is all there (line numbers, gutter and spaces aside)
        shown = "".join(ch for ch in screen_text(app) if not ch.isspace() and ch not in "│▁▂▃▄▅▆▇█")
        assert long_name in shown

    run_app(app, scenario, (80, 24))
