"""Latest sample images with their prompts, and each sampling point's grid.

Shows one picture at a time (the newest by default: after a sampling point, its grid of every
prompt); ``[`` and ``]`` (bound on the run screen) step through the run's samples and grids.
The picture is drawn by the shared ``ImageView`` widget; if that widget cannot be imported the
pane still shows the caption and the file path.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from sdft_tui.run_figures import RunFigures
from sdft_tui.text import literal


class _PathOnly(Static):
    """Stand-in for ImageView: names the file instead of drawing it."""

    def set_image(self, path) -> None:
        self.update(literal(f"image: {Path(path).name}") if path else "")


def _image_view(**kwargs):
    try:
        from sdft_tui.widgets.image_view import ImageView
    except ImportError:
        return _PathOnly(**kwargs)
    return ImageView(**kwargs)


class SampleView(Vertical):
    DEFAULT_CSS = """
    SampleView { height: 1fr; }
    SampleView > #sample-image { height: 1fr; }
    SampleView > #sample-caption { height: auto; max-height: 3; color: $text-muted; }
    """

    def __init__(self, figures: RunFigures, *, empty_hint: str = "no samples yet", **kwargs) -> None:
        super().__init__(**kwargs)
        self.figures = figures
        self.empty_hint = empty_hint   # the live screen adds its key; a read-only watch has none
        self.selected: int | None = None   # index into figures.pictures; None follows the newest
        self._caption_key: tuple | None = None
        self._image_path: str | None = None

    def compose(self) -> ComposeResult:
        yield _image_view(id="sample-image")
        yield Static(self.empty_hint, id="sample-caption")

    def step(self, delta: int) -> None:
        """Move through the pictures; reaching the newest one follows new pictures again."""
        n = len(self.figures.pictures)
        if not n:
            return
        current = n - 1 if self.selected is None else self.selected
        target = max(0, min(n - 1, current + delta))
        self.selected = None if target == n - 1 else target
        self.sync()

    def sync(self) -> None:
        pictures = self.figures.pictures
        if not pictures:
            return
        index = len(pictures) - 1 if self.selected is None else self.selected
        picture = pictures[index]
        if picture.path != self._image_path:   # decoding an image is the costly part: only on change
            self._image_path = picture.path
            self.query_one("#sample-image").set_image(picture.path)
        key = (index, len(pictures))
        if key == self._caption_key:
            return
        self._caption_key = key
        follow = "" if self.selected is None else "  (browsing: ] back to newest)"
        self.query_one("#sample-caption", Static).update(
            literal(f"step {picture.step} · {index + 1}/{len(pictures)}{follow}\n{picture.caption}"))
