"""Kitty/Sixel images where the terminal supports them, half-blocks everywhere else."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image
from textual.app import App

from sdft_tui.widgets import graphics
from sdft_tui.widgets.image_view import ImageView


@pytest.mark.parametrize("env, expected", [
    ({}, "halfblock"),
    ({"TERM": "xterm-256color"}, "halfblock"),
    ({"TERM": "xterm-kitty"}, "kitty"),
    ({"KITTY_WINDOW_ID": "1", "TERM": "xterm-256color"}, "kitty"),
    ({"TERM": "foot"}, "sixel"),
    ({"TERM_PROGRAM": "WezTerm"}, "sixel"),
    ({"TERM": "xterm-kitty", "TMUX": "/tmp/tmux-0/default,1,0"}, "halfblock"),   # multiplexers drop graphics
    ({"TERM": "xterm-256color", "SDFT_IMAGES": "sixel"}, "sixel"),                  # the user's choice wins
    ({"TERM": "xterm-kitty", "SDFT_IMAGES": "halfblock"}, "halfblock"),
])
def test_protocol_choice_from_the_environment(env, expected):
    assert graphics.choose_protocol(env) == expected


class Preview(App):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def compose(self):
        yield ImageView(self.path, id="view")


def _show(path, second):
    app = Preview(path)
    seen = {}

    async def main():
        async with app.run_test(size=(40, 12)) as pilot:
            await pilot.pause()
            view = app.query_one("#view", ImageView)
            seen["graphics"] = view.uses_graphics
            seen["children"] = [type(c).__name__ for c in view.children]
            view.set_image(second)
            await pilot.pause()
            if view.uses_graphics:
                seen["image"] = view.query_one("#picture").image
    asyncio.run(main())
    return seen


def test_halfblock_view_draws_itself(tmp_path):
    graphics.prepare_graphics({"SDFT_IMAGES": "halfblock"})
    Image.new("RGB", (32, 24), (200, 40, 40)).save(tmp_path / "a.png")
    seen = _show(tmp_path / "a.png", None)
    assert seen == {"graphics": False, "children": []}


def test_kitty_view_uses_textual_image(tmp_path):
    pytest.importorskip("textual_image")
    try:
        assert graphics.prepare_graphics({"SDFT_IMAGES": "kitty"}) == "kitty"
        Image.new("RGB", (32, 24), (200, 40, 40)).save(tmp_path / "a.png")
        Image.new("RGB", (32, 24), (40, 40, 200)).save(tmp_path / "b.png")
        seen = _show(tmp_path / "a.png", tmp_path / "b.png")
        assert seen["graphics"] and seen["children"] == ["TGPImage"]
        assert str(seen["image"]).endswith("b.png")       # set_image reaches the graphics widget
    finally:
        graphics.prepare_graphics({"SDFT_IMAGES": "halfblock"})
